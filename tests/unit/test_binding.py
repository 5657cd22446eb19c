"""The agent's GPU decision with a FAKE NVML backend (the real one needs a GPU node)."""

from __future__ import annotations

import pytest
from fakes_gpu import FakeGpuBackend, fake_device

from hpcdesk.node import binding
from hpcdesk.node.errors import StartError
from hpcdesk.node.nvenc import NvencResult
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig


def request(gpus: int = 1, kind: str = "host") -> DesktopRequest:
    return DesktopRequest(session_id="s", user="u", cpus=8, gpus=gpus, start_timeout=60,
                          desktop=DesktopConfig(), runtime=RuntimeConfig(kind=kind),  # type: ignore[arg-type]
                          network=NetworkConfig())


@pytest.fixture
def no_nvenc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The FAKE probe result an H100 gives: the encode session fails with status 2."""
    monkeypatch.setattr(binding, "probe_nvenc", lambda **_: NvencResult(
        available=False, status=2, reason="NV_ENC_ERR_UNSUPPORTED_DEVICE (2): no NVENC",
        step="open_session", api_version="13.0", codecs=(), device="H100"))


def test_no_gpu_requested_or_no_driver_is_the_software_path() -> None:
    b = binding.bind_gpu(request(gpus=0))
    assert (b.xorg_driver, b.encoder, b.bus_id) == ("dummy", "x264enc", None)
    b = binding.bind_gpu(request(), FakeGpuBackend(fail="no NVIDIA driver: libnvidia-ml missing"))
    assert b.xorg_driver == "dummy" and "no NVIDIA driver" in b.summary


def test_allocated_gpu_by_minor_number(monkeypatch: pytest.MonkeyPatch, no_nvenc: None) -> None:
    monkeypatch.setenv("SLURM_JOB_GPUS", "1")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.setattr(binding.gpu, "scan_dev_nodes", lambda: {})  # no device cgroups
    monkeypatch.setattr(binding, "has_nvidia_xorg_driver", lambda: True)
    backend = FakeGpuBackend([fake_device(0), fake_device(1, bus=0x6)])
    b = binding.bind_gpu(request(), backend)
    assert b.xorg_driver == "nvidia" and b.bus_id == "PCI:6:0:0"
    assert b.encoder == "x264enc" and "no NVENC" in b.encoder_reason
    assert b.encoder_threads == 4


def test_headless_driver_keeps_software_x(monkeypatch: pytest.MonkeyPatch, no_nvenc: None) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.setattr(binding.gpu, "scan_dev_nodes", lambda: {})
    monkeypatch.setattr(binding, "has_nvidia_xorg_driver", lambda: False)
    b = binding.bind_gpu(request(), FakeGpuBackend([fake_device(0)]))
    assert b.xorg_driver == "dummy" and "nvidia_drv.so" in b.summary


def test_gpu_with_an_active_display_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("SLURM_JOB_GPUS", raising=False)
    monkeypatch.delenv("SLURM_STEP_GPUS", raising=False)
    monkeypatch.setattr(binding.gpu, "scan_dev_nodes", lambda: {})
    with pytest.raises(StartError, match="EGL"):
        binding.bind_gpu(request(), FakeGpuBackend([fake_device(0, display_active=True)]))
