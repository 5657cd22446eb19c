"""Does this GPU really encode H.264 in hardware? Open an NVENC session and see.

NVML's encoder figures are no proof (an H100 reports an H.264 encoder capacity of 100 and has
no NVENC). The only proof is a real encode session: create a CUDA context on the GPU
(``libcuda.so.1``), open ``NvEncOpenEncodeSessionEx`` on it (``libnvidia-encode.so.1``), list
the codec GUIDs the session offers, and close it again.

The probe runs in a child process with a time limit (:func:`probe_nvenc`): a driver that
crashes or hangs costs the probe, never the agent. The child is this module:
``python -m hpcdesk.node.nvenc --pci-bus-id 00000000:3b:00.0 --json``.

The two NVENC structures used here (``NV_ENCODE_API_FUNCTION_LIST`` and
``NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS``) have kept their layout since NVENC API 9; their
version words are ``api_major | api_minor << 24 | struct_version << 16 | 0x7 << 28``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["NvencResult", "main", "nvenc_status_text", "probe_in_process", "probe_nvenc"]

NVENC_STATUS = (
    "NV_ENC_SUCCESS",
    "NV_ENC_ERR_NO_ENCODE_DEVICE",
    "NV_ENC_ERR_UNSUPPORTED_DEVICE",
    "NV_ENC_ERR_INVALID_ENCODERDEVICE",
    "NV_ENC_ERR_INVALID_DEVICE",
    "NV_ENC_ERR_DEVICE_NOT_EXIST",
    "NV_ENC_ERR_INVALID_PTR",
    "NV_ENC_ERR_INVALID_EVENT",
    "NV_ENC_ERR_INVALID_PARAM",
    "NV_ENC_ERR_INVALID_CALL",
    "NV_ENC_ERR_OUT_OF_MEMORY",
    "NV_ENC_ERR_ENCODER_NOT_INITIALIZED",
    "NV_ENC_ERR_UNSUPPORTED_PARAM",
    "NV_ENC_ERR_LOCK_BUSY",
    "NV_ENC_ERR_NOT_ENOUGH_BUFFER",
    "NV_ENC_ERR_INVALID_VERSION",
    "NV_ENC_ERR_MAP_FAILED",
    "NV_ENC_ERR_NEED_MORE_INPUT",
    "NV_ENC_ERR_ENCODER_BUSY",
    "NV_ENC_ERR_EVENT_NOT_REGISTERD",
    "NV_ENC_ERR_GENERIC",
    "NV_ENC_ERR_INCOMPATIBLE_CLIENT_KEY",
    "NV_ENC_ERR_UNIMPLEMENTED",
    "NV_ENC_ERR_RESOURCE_REGISTER_FAILED",
    "NV_ENC_ERR_RESOURCE_NOT_REGISTERED",
    "NV_ENC_ERR_RESOURCE_NOT_MAPPED",
    "NV_ENC_ERR_NEED_MORE_OUTPUT",
)

_MEANING = {
    1: "no NVENC-capable device was found",
    2: "this GPU has no NVENC (datacenter compute GPUs such as A100, H100, H200 lack it)",
    4: "the CUDA device handed to NVENC is not valid",
    5: "the GPU has gone away",
    10: "out of memory, or every encode session of this GPU is in use",
    15: "the driver does not support this NVENC API version (driver too old)",
    21: "the driver refused this client",
}

# Codec GUIDs (Data1, Data2, Data3, Data4) from nvEncodeAPI.h.
_CODECS = {
    "h264": (0x6BC82762, 0x4E63, 0x4CA4, (0xAA, 0x85, 0x1E, 0x50, 0xF3, 0x21, 0xF6, 0xBF)),
    "hevc": (0x790CDC88, 0x4522, 0x4D7B, (0x94, 0x25, 0xBD, 0xA9, 0x97, 0x5F, 0x76, 0x03)),
    "av1": (0x0A352289, 0x0AA7, 0x4759, (0x86, 0x2D, 0x5D, 0x15, 0xCD, 0x16, 0xD2, 0x54)),
}

_NEWEST_API = (13, 0)  # the newest NVENC API whose two structures we know
_OLDEST_API = (9, 0)
_DEVICE_TYPE_CUDA = 1
_CUDA_SUCCESS = 0


@dataclass(frozen=True)
class NvencResult:
    """The probe's verdict. ``status`` is the failing call's NVENCSTATUS or CUresult."""

    available: bool
    status: int | None
    reason: str
    step: str = ""
    api_version: str = ""
    codecs: tuple[str, ...] = field(default=())
    device: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["codecs"] = list(self.codecs)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NvencResult:
        return cls(
            available=bool(data["available"]),
            status=None if data.get("status") is None else int(data["status"]),
            reason=str(data["reason"]),
            step=str(data.get("step", "")),
            api_version=str(data.get("api_version", "")),
            codecs=tuple(str(codec) for codec in data.get("codecs", ())),
            device=str(data.get("device", "")),
        )


def nvenc_status_text(status: int) -> str:
    """``2`` -> ``"NV_ENC_ERR_UNSUPPORTED_DEVICE (2): this GPU has no NVENC (...)"``."""
    name = NVENC_STATUS[status] if 0 <= status < len(NVENC_STATUS) else "NVENCSTATUS"
    meaning = _MEANING.get(status)
    return f"{name} ({status})" + (f": {meaning}" if meaning else "")


class _Guid(ctypes.Structure):
    _fields_ = [
        ("data1", ctypes.c_uint32),
        ("data2", ctypes.c_uint16),
        ("data3", ctypes.c_uint16),
        ("data4", ctypes.c_uint8 * 8),
    ]

    def key(self) -> tuple[int, int, int, tuple[int, ...]]:
        return (self.data1, self.data2, self.data3, tuple(self.data4))


class _OpenSessionParams(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("deviceType", ctypes.c_int),
        ("device", ctypes.c_void_p),
        ("reserved", ctypes.c_void_p),
        ("apiVersion", ctypes.c_uint32),
        ("reserved1", ctypes.c_uint32 * 253),
        ("reserved2", ctypes.c_void_p * 64),
    ]


_OpenSessionEx = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(_OpenSessionParams), ctypes.POINTER(ctypes.c_void_p)
)
_GuidCount = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32))
_GetGuids = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.POINTER(_Guid),
    ctypes.c_uint32,
    ctypes.POINTER(ctypes.c_uint32),
)
_Destroy = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)

# NV_ENCODE_API_FUNCTION_LIST, in header order, up to the last entry used here; the tail is
# padding larger than any API version's (the driver fills only what it knows).
_FUNCTION_SLOTS = (
    "nvEncOpenEncodeSession",
    "nvEncGetEncodeGUIDCount",
    "nvEncGetEncodeProfileGUIDCount",
    "nvEncGetEncodeProfileGUIDs",
    "nvEncGetEncodeGUIDs",
    "nvEncGetInputFormatCount",
    "nvEncGetInputFormats",
    "nvEncGetEncodeCaps",
    "nvEncGetEncodePresetCount",
    "nvEncGetEncodePresetGUIDs",
    "nvEncGetEncodePresetConfig",
    "nvEncInitializeEncoder",
    "nvEncCreateInputBuffer",
    "nvEncDestroyInputBuffer",
    "nvEncCreateBitstreamBuffer",
    "nvEncDestroyBitstreamBuffer",
    "nvEncEncodePicture",
    "nvEncLockBitstream",
    "nvEncUnlockBitstream",
    "nvEncLockInputBuffer",
    "nvEncUnlockInputBuffer",
    "nvEncGetEncodeStats",
    "nvEncGetSequenceParams",
    "nvEncRegisterAsyncEvent",
    "nvEncUnregisterAsyncEvent",
    "nvEncMapInputResource",
    "nvEncUnmapInputResource",
    "nvEncDestroyEncoder",
    "nvEncInvalidateRefFrames",
    "nvEncOpenEncodeSessionEx",
)
_TYPED = {
    "nvEncGetEncodeGUIDCount": _GuidCount,
    "nvEncGetEncodeGUIDs": _GetGuids,
    "nvEncDestroyEncoder": _Destroy,
    "nvEncOpenEncodeSessionEx": _OpenSessionEx,
}


class _FunctionList(ctypes.Structure):
    _fields_ = [
        ("version", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        *((name, _TYPED.get(name, ctypes.c_void_p)) for name in _FUNCTION_SLOTS),
        ("padding", ctypes.c_void_p * 512),
    ]


def _struct_version(api: tuple[int, int], struct_ver: int) -> int:
    return api[0] | (api[1] << 24) | (struct_ver << 16) | (0x7 << 28)


def _fail(step: str, status: int | None, reason: str, **extra: Any) -> NvencResult:
    return NvencResult(available=False, status=status, reason=reason, step=step, **extra)


def _cuda_error(cuda: Any, status: int) -> str:
    name = ctypes.c_char_p()
    try:
        if cuda.cuGetErrorName(status, ctypes.byref(name)) == _CUDA_SUCCESS and name.value:
            return f"{name.value.decode()} ({status})"
    except AttributeError:
        pass
    return f"CUresult {status}"


def _uuid_bytes(uuid: str) -> bytes:
    text = uuid.strip()
    if text.upper().startswith("GPU-"):
        text = text[4:]
    return bytes.fromhex(text.replace("-", ""))


def _cuda_device(cuda: Any, pci_bus_id: str | None, uuid: str | None) -> tuple[int, int, str]:
    """(CUresult, CUdevice, which) for the GPU named by bus id or UUID (else CUDA device 0)."""
    device = ctypes.c_int(0)
    if pci_bus_id:
        domain, rest = pci_bus_id.split(":", 1) if pci_bus_id.count(":") == 2 else ("0", pci_bus_id)
        short = f"{int(domain, 16):04x}:{rest.lower()}"
        status = cuda.cuDeviceGetByPCIBusId(ctypes.byref(device), short.encode())
        return status, device.value, f"cuDeviceGetByPCIBusId({short})"
    if uuid:
        wanted = _uuid_bytes(uuid)
        count = ctypes.c_int(0)
        status = cuda.cuDeviceGetCount(ctypes.byref(count))
        if status != _CUDA_SUCCESS:
            return status, 0, "cuDeviceGetCount"
        for ordinal in range(count.value):
            raw = (ctypes.c_ubyte * 16)()
            if cuda.cuDeviceGet(ctypes.byref(device), ordinal) != _CUDA_SUCCESS:
                continue
            if cuda.cuDeviceGetUuid(raw, device) == _CUDA_SUCCESS and bytes(raw) == wanted:
                return _CUDA_SUCCESS, device.value, f"CUDA device {ordinal} ({uuid})"
        return 101, 0, f"no CUDA device has UUID {uuid}"  # 101: CUDA_ERROR_INVALID_DEVICE
    status = cuda.cuDeviceGet(ctypes.byref(device), 0)
    return status, device.value, "CUDA device 0"


def _offered_codecs(funcs: _FunctionList, encoder: ctypes.c_void_p) -> tuple[int, tuple[str, ...]]:
    count = ctypes.c_uint32(0)
    status = int(funcs.nvEncGetEncodeGUIDCount(encoder, ctypes.byref(count)))
    if status != 0 or count.value == 0:
        return status, ()
    guids = (_Guid * count.value)()
    got = ctypes.c_uint32(0)
    status = int(funcs.nvEncGetEncodeGUIDs(encoder, guids, count.value, ctypes.byref(got)))
    if status != 0:
        return status, ()
    keys = {guids[i].key() for i in range(got.value)}
    return 0, tuple(name for name, guid in _CODECS.items() if guid in keys)


def _encode_session(cuda_ctx: ctypes.c_void_p, device_name: str) -> NvencResult:
    try:
        nvenc: Any = ctypes.CDLL("libnvidia-encode.so.1")
    except OSError:
        return _fail(
            "libnvidia-encode", None,
            "libnvidia-encode.so.1 not found: the driver's video encode library is not "
            "installed (compute-only driver) or not bound into the container",
            device=device_name,
        )
    version = ctypes.c_uint32(0)
    status = int(nvenc.NvEncodeAPIGetMaxSupportedVersion(ctypes.byref(version)))
    if status != 0:
        return _fail("NvEncodeAPIGetMaxSupportedVersion", status, nvenc_status_text(status),
                     device=device_name)
    api = min((version.value >> 4, version.value & 0xF), _NEWEST_API)
    api_text = f"{api[0]}.{api[1]}"
    if api < _OLDEST_API:
        return _fail("NvEncodeAPIGetMaxSupportedVersion", None,
                     f"the driver offers NVENC API {api_text} only (need 9.0 or newer): "
                     "update the NVIDIA driver", api_version=api_text, device=device_name)
    funcs = _FunctionList()
    funcs.version = _struct_version(api, 2)
    status = int(nvenc.NvEncodeAPICreateInstance(ctypes.byref(funcs)))
    if status != 0 or not funcs.nvEncOpenEncodeSessionEx:
        return _fail("NvEncodeAPICreateInstance", status, nvenc_status_text(status),
                     api_version=api_text, device=device_name)
    params = _OpenSessionParams()
    params.version = _struct_version(api, 1)
    params.deviceType = _DEVICE_TYPE_CUDA
    params.device = cuda_ctx
    params.apiVersion = api[0] | (api[1] << 24)
    encoder = ctypes.c_void_p()
    status = int(funcs.nvEncOpenEncodeSessionEx(ctypes.byref(params), ctypes.byref(encoder)))
    if status != 0:
        if encoder.value and funcs.nvEncDestroyEncoder:
            funcs.nvEncDestroyEncoder(encoder)
        return _fail("nvEncOpenEncodeSessionEx", status, nvenc_status_text(status),
                     api_version=api_text, device=device_name)
    try:
        status, codecs = _offered_codecs(funcs, encoder)
    finally:
        funcs.nvEncDestroyEncoder(encoder)
    if status != 0:
        return _fail("nvEncGetEncodeGUIDs", status, nvenc_status_text(status),
                     api_version=api_text, device=device_name)
    if "h264" not in codecs:
        return _fail("nvEncGetEncodeGUIDs", 0,
                     f"NVENC opened but offers no H.264 (only {', '.join(codecs) or 'nothing'})",
                     api_version=api_text, codecs=codecs, device=device_name)
    return NvencResult(True, 0, f"NVENC H.264 encode session opened on {device_name}",
                       step="ok", api_version=api_text, codecs=codecs, device=device_name)


def _cuda_context(cuda: Any, device: int) -> tuple[int, ctypes.c_void_p, Callable[[], None]]:
    """A current CUDA context on ``device``: cuCtxCreate, or the primary context where a
    future libcuda lacks the ``cuCtxCreate_v2`` entry point. Returns (CUresult, ctx, release)."""
    ctx = ctypes.c_void_p()
    if hasattr(cuda, "cuCtxCreate_v2"):
        status = int(cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, device))
        return status, ctx, lambda: cuda.cuCtxDestroy_v2(ctx)
    status = int(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), device))
    if status != _CUDA_SUCCESS:
        return status, ctx, lambda: None
    pushed = int(cuda.cuCtxPushCurrent_v2(ctx))

    def release() -> None:
        if pushed == _CUDA_SUCCESS:
            cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        cuda.cuDevicePrimaryCtxRelease_v2(device)

    if pushed != _CUDA_SUCCESS:
        release()
    return pushed, ctx, release


def probe_in_process(pci_bus_id: str | None = None, uuid: str | None = None) -> NvencResult:
    """The probe itself, in this process. Prefer :func:`probe_nvenc` (child process)."""
    try:
        cuda: Any = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return _fail("libcuda", None,
                     "libcuda.so.1 not found: no NVIDIA driver here (or the driver libraries "
                     "are not bound into the container)")
    status = int(cuda.cuInit(0))
    if status != _CUDA_SUCCESS:
        return _fail("cuInit", status, f"cuInit failed: {_cuda_error(cuda, status)}")
    status, device, which = _cuda_device(cuda, pci_bus_id, uuid)
    if status != _CUDA_SUCCESS:
        return _fail("cuDeviceGet", status, f"{which} failed: {_cuda_error(cuda, status)}")
    raw_name = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(raw_name, 256, device)
    device_name = raw_name.value.decode(errors="replace") or which
    status, ctx, release = _cuda_context(cuda, device)
    if status != _CUDA_SUCCESS:
        return _fail("cuCtxCreate", status,
                     f"cannot create a CUDA context on {device_name}: {_cuda_error(cuda, status)}",
                     device=device_name)
    try:
        return _encode_session(ctx, device_name)
    finally:
        release()


def probe_nvenc(pci_bus_id: str | None = None, uuid: str | None = None,
                timeout: float = 30.0) -> NvencResult:
    """Run the probe in a child Python with a time limit; never raises, never hangs.

    The child does not inherit CUDA_VISIBLE_DEVICES when a bus id or UUID names the GPU, so
    that CUDA can see the GPU by that name (device cgroups still apply).
    """
    command = [sys.executable, "-m", "hpcdesk.node.nvenc", "--json"]
    if pci_bus_id:
        command += ["--pci-bus-id", pci_bus_id]
    if uuid:
        command += ["--uuid", uuid]
    env = dict(os.environ)
    if pci_bus_id or uuid:
        env.pop("CUDA_VISIBLE_DEVICES", None)
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return _fail("timeout", None,
                     f"the NVENC probe did not finish in {timeout:g} s (driver hung?)")
    except OSError as exc:
        return _fail("spawn", None, f"cannot start the NVENC probe: {exc}")
    if done.returncode < 0:
        return _fail("crash", None,
                     f"the NVENC probe crashed (signal {-done.returncode}) inside the driver")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            try:
                return NvencResult.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError):
                break
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return _fail("child", None, f"the NVENC probe failed (exit {done.returncode}): {tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hpcdesk.node.nvenc",
        description="Open a real NVENC H.264 session on one GPU and report the result.",
    )
    parser.add_argument("--pci-bus-id", help="the GPU's PCI bus id, e.g. 00000000:3b:00.0")
    parser.add_argument("--uuid", help="the GPU's UUID, e.g. GPU-8c3e...")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--subprocess", action="store_true",
                        help="probe in a child process with a time limit (as the agent does)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.subprocess:
        result = probe_nvenc(args.pci_bus_id, args.uuid, timeout=args.timeout)
    else:
        try:
            result = probe_in_process(args.pci_bus_id, args.uuid)
        except Exception as exc:  # a surprise from the driver still gives a verdict
            result = _fail("exception", None, f"the NVENC probe raised {exc!r}")
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        verdict = "available" if result.available else "not available"
        print(f"NVENC {verdict}: {result.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
