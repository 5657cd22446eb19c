"""Encoder decisions (NVENC only when a real session opened) and the NVENC probe's plumbing.

The real encode session is exercised on a GPU host by tests/gpu/gpu_node_check.sh.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys

import pytest

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

    monkeypatch.setattr(nvenc.subprocess, "run", hang)
    result = probe_nvenc(pci_bus_id="00000000:00:06.0", timeout=1)
    assert not result.available and "did not finish" in result.reason


def test_probe_crash_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess(args="probe", returncode=-11, stdout="", stderr="")

    monkeypatch.setattr(nvenc.subprocess, "run", crash)
    result = probe_nvenc(uuid="GPU-0")
    assert not result.available and "signal 11" in result.reason


def test_uuid_bytes() -> None:
    raw = nvenc._uuid_bytes("GPU-8c3e5f0a-1111-2222-3333-444455556666")
    assert raw == bytes.fromhex("8c3e5f0a111122223333444455556666")
