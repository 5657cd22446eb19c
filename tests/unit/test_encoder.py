"""Encoder decisions (NVENC only when a real session opened) and the NVENC probe's plumbing.

The real encode session is exercised on a GPU host by tests/gpu/gpu_node_check.sh.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys

import pytest
from tooling import require

from hpcdesk.node import nvenc
from hpcdesk.node.encoder import decide_encoder, software_threads
from hpcdesk.node.nvenc import NvencResult, nvenc_status_text, probe_nvenc

H100 = NvencResult(False, 2, nvenc_status_text(2), step="nvEncOpenEncodeSessionEx",
                   api_version="13.0", device="NVIDIA H100 80GB HBM3")
L40S = NvencResult(True, 0, "NVENC H.264 encode session opened on NVIDIA L40S", step="ok",
                   api_version="13.0", codecs=("h264", "hevc", "av1"), device="NVIDIA L40S")
NO_LIB = NvencResult(False, None, "libnvidia-encode.so.1 not found: ...", step="libnvidia-encode")


def test_auto_uses_nvenc_only_when_the_session_opened() -> None:
    choice = decide_encoder("auto", L40S, 16)
    assert (choice.name, choice.threads, choice.hardware) == ("nvh264enc", 0, True)
    assert "L40S" in choice.reason


def test_auto_on_h100_falls_to_x264_and_says_why() -> None:
    choice = decide_encoder("auto", H100, 16)
    assert choice.name == "x264enc"
    assert choice.threads == 8
    assert choice.reason.startswith("no NVENC -> x264enc")
    assert "NV_ENC_ERR_UNSUPPORTED_DEVICE (2)" in choice.reason
    assert "16 allocated CPUs" in choice.reason


def test_auto_without_gpu() -> None:
    choice = decide_encoder("auto", None, 4)
    assert (choice.name, choice.threads) == ("x264enc", 2)
    assert "no NVIDIA GPU" in choice.reason


def test_auto_with_missing_encode_library() -> None:
    choice = decide_encoder("auto", NO_LIB, 2)
    assert choice.name == "x264enc" and "libnvidia-encode" in choice.reason


def test_nvh264enc_requested_without_nvenc_falls_back() -> None:
    choice = decide_encoder("nvh264enc", H100, 8)
    assert choice.name == "x264enc"
    assert choice.threads == 4
    assert "nvh264enc was requested" in choice.reason
    assert "fell back to x264enc" in choice.reason


def test_nvh264enc_requested_with_nvenc() -> None:
    choice = decide_encoder("nvh264enc", L40S, 8)
    assert choice.name == "nvh264enc" and "as requested" in choice.reason


@pytest.mark.parametrize("name", ["x264enc", "vp8enc", "vp9enc"])
def test_software_on_request_even_with_nvenc(name: str) -> None:
    choice = decide_encoder(name, L40S, 6)
    assert (choice.name, choice.threads, choice.hardware) == (name, 3, False)
    assert "as requested" in choice.reason
    assert "encoder auto would use it" in choice.reason


@pytest.mark.parametrize("name", ["vp8enc", "vp9enc"])
def test_vp_without_gpu(name: str) -> None:
    choice = decide_encoder(name, None, 2)
    assert choice.name == name and choice.threads == 1
    assert ("VP8" if name == "vp8enc" else "VP9") in choice.reason


def test_request_is_case_and_space_insensitive() -> None:
    assert decide_encoder("  AUTO ", None, 2).name == "x264enc"


def test_unknown_encoder() -> None:
    with pytest.raises(ValueError, match="choose one of auto, nvh264enc"):
        decide_encoder("h265", None, 2)


@pytest.mark.parametrize(("cpus", "threads"), [(0, 1), (1, 1), (2, 1), (3, 1), (4, 2),
                                               (8, 4), (16, 8), (64, 8)])
def test_threads_sized_to_allocation(cpus: int, threads: int) -> None:
    assert software_threads(cpus) == threads
    assert decide_encoder("x264enc", None, cpus).threads == threads


def test_single_cpu_wording() -> None:
    assert "1 thread for 1 allocated CPU" in decide_encoder("auto", None, 1).reason


def test_status_text() -> None:
    assert nvenc_status_text(2).startswith("NV_ENC_ERR_UNSUPPORTED_DEVICE (2): this GPU has no")
    assert nvenc_status_text(0) == "NV_ENC_SUCCESS (0)"
    assert nvenc_status_text(99) == "NVENCSTATUS (99)"


def test_struct_versions_follow_the_header_macro() -> None:
    # NVENCAPI_STRUCT_VERSION(ver) = major | minor << 24 | ver << 16 | 0x7 << 28
    assert nvenc._struct_version((13, 0), 2) == 0x7002000D
    assert nvenc._struct_version((12, 2), 1) == 0x7201000C
    assert nvenc._struct_version((11, 1), 1) == 0x7101000B


def test_struct_layouts() -> None:
    assert ctypes.sizeof(nvenc._OpenSessionParams) == 1552
    assert nvenc._OpenSessionParams.apiVersion.offset == 24
    names = [name for name, *_ in nvenc._FunctionList._fields_]
    assert names.index("nvEncOpenEncodeSessionEx") == 2 + 29
    assert nvenc._FunctionList.nvEncGetEncodeGUIDs.offset == 8 + 4 * 8
    assert nvenc._FunctionList.nvEncDestroyEncoder.offset == 8 + 27 * 8


def test_json_round_trip() -> None:
    result = NvencResult(False, 2, nvenc_status_text(2), step="nvEncOpenEncodeSessionEx",
                         api_version="13.0", codecs=(), device="NVIDIA H100")
    assert NvencResult.from_json(json.loads(json.dumps(result.to_json()))) == result


def test_probe_in_a_child_process_never_raises() -> None:
    result = probe_nvenc(pci_bus_id="00000000:00:06.0", timeout=60)
    assert isinstance(result, NvencResult)
    if not result.available:
        assert result.reason


def test_module_cli_prints_json() -> None:
    done = subprocess.run([sys.executable, "-m", "hpcdesk.node.nvenc", "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(data) >= {"available", "status", "reason"}


def test_probe_timeout_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def hang(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(cmd="probe", timeout=1)

    monkeypatch.setattr(subprocess, "run", hang)
    result = probe_nvenc(pci_bus_id="00000000:00:06.0", timeout=1)
    assert not result.available and "did not finish" in result.reason


def test_probe_crash_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args="probe", returncode=-11, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", crash)
    result = probe_nvenc(uuid="GPU-0")
    assert not result.available and "signal 11" in result.reason


def test_uuid_bytes() -> None:
    raw = nvenc._uuid_bytes("GPU-8c3e5f0a-1111-2222-3333-444455556666")
    assert raw == bytes.fromhex("8c3e5f0a111122223333444455556666")


# --- the probe end to end against fake driver libraries ----------------------------------
# Fakes, named as such: a libcuda.so.1 with two GPUs and a libnvidia-encode.so.1 whose
# function table sits at the offsets of nvEncodeAPI.h (12.x/13.x: GUIDCount slot 1, GUIDs 4,
# DestroyEncoder 27, OpenEncodeSessionEx 29). GPU 0 ("H100") refuses the session with
# NV_ENC_ERR_UNSUPPORTED_DEVICE; GPU 1 ("L40S") opens it and offers H.264 and HEVC.

FAKE_CUDA_C = r"""
#include <stdio.h>
#include <string.h>
int cuInit(unsigned flags) { return 0; }
int cuDeviceGetByPCIBusId(int *dev, const char *id) {
    if (strcmp(id, "0000:00:06.0") == 0) { *dev = 0; return 0; }
    if (strcmp(id, "0000:3b:00.0") == 0) { *dev = 1; return 0; }
    return 101;
}
int cuDeviceGetCount(int *n) { *n = 2; return 0; }
int cuDeviceGet(int *dev, int ordinal) { *dev = ordinal; return 0; }
int cuDeviceGetUuid(unsigned char *uuid, int dev) {
    for (int i = 0; i < 16; i++) uuid[i] = (unsigned char)(dev * 16 + i);
    return 0;
}
int cuDeviceGetName(char *name, int len, int dev) {
    snprintf(name, len, "%s", dev == 0 ? "Fake H100" : "Fake L40S"); return 0;
}
int cuCtxCreate_v2(void **ctx, unsigned flags, int dev) { *ctx = (void *)(long)(0x1000 + dev); return 0; }
int cuCtxDestroy_v2(void *ctx) { return 0; }
int cuGetErrorName(int err, const char **name) {
    *name = err == 101 ? "CUDA_ERROR_INVALID_DEVICE" : "CUDA_ERROR_UNKNOWN"; return 0;
}
"""

FAKE_NVENC_C = r"""
#include <stdint.h>
#include <string.h>
typedef struct { uint32_t d1; uint16_t d2, d3; uint8_t d4[8]; } guid_t;
static const guid_t h264 = {0x6bc82762, 0x4e63, 0x4ca4, {0xaa,0x85,0x1e,0x50,0xf3,0x21,0xf6,0xbf}};
static const guid_t hevc = {0x790cdc88, 0x4522, 0x4d7b, {0x94,0x25,0xbd,0xa9,0x97,0x5f,0x76,0x03}};
static int open_ex(void *params, void **encoder) {
    uint32_t version = *(uint32_t *)params, type = *(uint32_t *)((char *)params + 4);
    void *device = *(void **)((char *)params + 8);
    uint32_t api = *(uint32_t *)((char *)params + 24);
    if (api != 13 || version != (api | (1u << 16) | (7u << 28))) return 15;
    if (type != 1) return 4;
    if (device == (void *)0x1000) { *encoder = 0; return 2; }
    *encoder = (void *)0x2000; return 0;
}
static int guid_count(void *encoder, uint32_t *n) { *n = 2; return 0; }
static int guids(void *encoder, guid_t *out, uint32_t size, uint32_t *n) {
    if (size < 2) return 8;
    out[0] = hevc; out[1] = h264; *n = 2; return 0;
}
static int destroy(void *encoder) { return encoder == (void *)0x2000 ? 0 : 6; }
int NvEncodeAPIGetMaxSupportedVersion(uint32_t *version) { *version = (13u << 4) | 0; return 0; }
int NvEncodeAPICreateInstance(void *list) {
    if (*(uint32_t *)list != (13u | (2u << 16) | (7u << 28))) return 15;
    void **slot = (void **)((char *)list + 8);
    slot[1] = (void *)guid_count; slot[4] = (void *)guids;
    slot[27] = (void *)destroy; slot[29] = (void *)open_ex;
    return 0;
}
"""


@pytest.fixture(scope="module")
def fake_driver_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    require("gcc", package="gcc")  # builds the fake driver libraries
    cc = str(shutil.which("gcc"))
    out = tmp_path_factory.mktemp("fakedriver")
    for name, source in (("libcuda.so.1", FAKE_CUDA_C), ("libnvidia-encode.so.1", FAKE_NVENC_C)):
        src = out / (name + ".c")
        src.write_text(source)
        subprocess.run([cc, "-shared", "-fPIC", "-o", str(out / name), str(src)], check=True)
    return str(out)


def fake_probe(fake_driver_dir: str, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "hpcdesk.node.nvenc", "--json", *args],
        capture_output=True, text=True, timeout=60, check=True,
        env={**os.environ, "LD_LIBRARY_PATH": fake_driver_dir},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_fake_h100_refuses_the_session(fake_driver_dir: str) -> None:
    data = fake_probe(fake_driver_dir, "--pci-bus-id", "00000000:00:06.0")
    assert data["available"] is False
    assert data["status"] == 2
    assert data["step"] == "nvEncOpenEncodeSessionEx"
    assert str(data["reason"]).startswith("NV_ENC_ERR_UNSUPPORTED_DEVICE (2): this GPU has no")
    assert data["api_version"] == "13.0" and data["device"] == "Fake H100"
    choice = decide_encoder("auto", NvencResult.from_json(data), 16)
    assert choice.name == "x264enc" and choice.reason.startswith("no NVENC -> x264enc")


def test_fake_l40s_opens_h264(fake_driver_dir: str) -> None:
    data = fake_probe(fake_driver_dir, "--pci-bus-id", "00000000:3B:00.0")
    assert data["available"] is True, data
    assert data["codecs"] == ["h264", "hevc"]
    assert decide_encoder("auto", NvencResult.from_json(data), 4).name == "nvh264enc"


def test_fake_gpu_by_uuid_and_unknown_bus(fake_driver_dir: str) -> None:
    uuid = "GPU-" + bytes(range(16, 32)).hex()
    assert fake_probe(fake_driver_dir, "--uuid", uuid)["device"] == "Fake L40S"
    missing = fake_probe(fake_driver_dir, "--pci-bus-id", "00000000:99:00.0")
    assert missing["available"] is False and missing["status"] == 101
    assert "CUDA_ERROR_INVALID_DEVICE" in str(missing["reason"])


def test_probe_nvenc_child_with_fake_driver(fake_driver_dir: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", fake_driver_dir)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # dropped: the bus id names the GPU
    result = probe_nvenc(pci_bus_id="00000000:00:06.0")
    assert (result.available, result.status) == (False, 2)
