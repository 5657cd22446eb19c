"""Slurm allocation -> NVML devices (never by raw NVML index); display-active refusal."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
from fakes_gpu import FakeGpuBackend, fake_device

from hpcdesk.node import gpu
from hpcdesk.node.gpu import (
    AllocationError,
    DisplayActiveError,
    NvmlBackend,
    check_display_free,
    choose_display_gpu,
    inventory,
    normalize_bus_id,
    resolve_allocation,
    resolve_allocation_explained,
    scan_dev_nodes,
)

# A 4-GPU node whose NVML order differs from the minor numbers (as happens on real nodes:
# NVML enumerates by PCI bus, the kernel numbers /dev/nvidiaN in probe order).
NODE = [
    fake_device(0, minor=2, bus=0x18),
    fake_device(1, minor=0, bus=0x3B),
    fake_device(2, minor=3, bus=0x86),
    fake_device(3, minor=1, bus=0xAF),
]
ALL_OPEN = {0: True, 1: True, 2: True, 3: True}


def minors(devices: list[gpu.Device]) -> list[int | None]:
    return [dev.minor for dev in devices]


def test_slurm_job_gpus_are_minor_numbers_not_nvml_indices() -> None:
    env = {"SLURM_JOB_GPUS": "1", "CUDA_VISIBLE_DEVICES": "0"}  # no cgroups: all visible
    chosen = resolve_allocation(env, NODE, ALL_OPEN)
    assert minors(chosen) == [1]
    assert chosen[0].index == 3  # NVML index 3, not 1
    assert chosen[0].pci_bus_id == "00000000:af:00.0"


def test_step_gpus_win_over_job_gpus() -> None:
    env = {"SLURM_JOB_GPUS": "0,1,2", "SLURM_STEP_GPUS": "2"}
    devices, how = resolve_allocation_explained(env, NODE, ALL_OPEN)
    assert minors(devices) == [2]
    assert "SLURM_STEP_GPUS" in how


def test_multiple_gpus_keep_slurm_order() -> None:
    env = {"SLURM_JOB_GPUS": "3,0"}
    assert minors(resolve_allocation(env, NODE, ALL_OPEN)) == [3, 0]


def test_cuda_visible_devices_uuid() -> None:
    target = NODE[2]
    env = {"CUDA_VISIBLE_DEVICES": target.uuid, "SLURM_JOB_GPUS": "0"}
    devices, how = resolve_allocation_explained(env, NODE, ALL_OPEN)
    assert devices == [target]
    assert "UUID" in how


def test_cuda_visible_devices_uuid_prefix_and_case() -> None:
    target = NODE[1]
    env = {"CUDA_VISIBLE_DEVICES": target.uuid[:12].lower()}
    assert resolve_allocation(env, NODE, ALL_OPEN) == [target]


def test_mig_uuid_maps_to_parent_gpu_and_is_refused_for_x() -> None:
    parent = fake_device(0, minor=0, mig_uuids=("MIG-aaaa-bbbb", "MIG-cccc-dddd"))
    other = fake_device(1, minor=1)
    env = {"CUDA_VISIBLE_DEVICES": "MIG-cccc-dddd"}
    chosen = resolve_allocation(env, [parent, other], {0: True, 1: True})
    assert chosen == [parent]
    with pytest.raises(DisplayActiveError, match="MIG"):
        check_display_free(parent)


def test_unknown_uuid_is_an_allocation_error() -> None:
    env = {"CUDA_VISIBLE_DEVICES": "GPU-deadbeef"}
    with pytest.raises(AllocationError, match="GPU-deadbeef"):
        resolve_allocation(env, NODE, ALL_OPEN)


def test_device_cgroups_are_the_truth() -> None:
    # With ConstrainDevices=yes only the allocated /dev/nvidiaN open, and CUDA renumbers
    # the visible GPU as 0: CUDA_VISIBLE_DEVICES=0 must not mean "minor 0" or "NVML 0".
    env = {"SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0"}
    nodes = {0: False, 1: False, 2: False, 3: True}
    devices, how = resolve_allocation_explained(env, NODE, nodes)
    assert minors(devices) == [3]
    assert "cgroups" in how


def test_cgroups_disagreeing_with_slurm_are_noted() -> None:
    env = {"SLURM_JOB_GPUS": "1"}  # gres.conf File= order not the minor order
    nodes = {0: False, 1: False, 2: True, 3: False}
    devices, how = resolve_allocation_explained(env, NODE, nodes)
    assert minors(devices) == [2]
    assert "differs" in how


def test_cgroups_with_uuid_intersect() -> None:
    env = {"CUDA_VISIBLE_DEVICES": f"{NODE[0].uuid},{NODE[3].uuid}"}
    nodes = {0: False, 1: True, 2: True, 3: False}
    assert minors(resolve_allocation(env, NODE, nodes)) == [2, 1]


def test_gpu_device_ordinal_in_pci_order() -> None:
    env = {"GPU_DEVICE_ORDINAL": "1"}
    devices, how = resolve_allocation_explained(env, NODE, ALL_OPEN)
    assert devices[0].pci_bus_id == "00000000:3b:00.0"  # second by bus id
    assert "PCI bus order" in how


def test_cuda_indices_without_slurm_use_pci_order() -> None:
    shuffled = [NODE[3], NODE[0], NODE[2], NODE[1]]  # NVML order must not matter
    env = {"CUDA_VISIBLE_DEVICES": "2"}
    assert resolve_allocation(env, shuffled, ALL_OPEN)[0].pci_bus_id == "00000000:86:00.0"


def test_index_out_of_range() -> None:
    with pytest.raises(AllocationError, match="has 4 GPU"):
        resolve_allocation({"CUDA_VISIBLE_DEVICES": "7"}, NODE, ALL_OPEN)


def test_slurm_gpu_not_on_node() -> None:
    with pytest.raises(AllocationError, match=r"gres\.conf"):
        resolve_allocation({"SLURM_JOB_GPUS": "9"}, NODE, ALL_OPEN)


def test_garbage_slurm_gpus() -> None:
    with pytest.raises(AllocationError, match="not a list of GPU numbers"):
        resolve_allocation({"SLURM_JOB_GPUS": "gpu0"}, NODE, ALL_OPEN)


@pytest.mark.parametrize("env", [
    {},
    {"CUDA_VISIBLE_DEVICES": ""},
    {"CUDA_VISIBLE_DEVICES": "NoDevFiles"},
    {"CUDA_VISIBLE_DEVICES": "-1"},
])
def test_no_gpu_in_allocation(env: dict[str, str]) -> None:
    devices, how = resolve_allocation_explained(env, NODE, ALL_OPEN)
    assert devices == []
    assert "no GPU" in how


def test_fake_slurm_devices_without_nvidia_nodes() -> None:
    # The dev cluster's fake GPUs: SLURM_JOB_GPUS=0 but no NVIDIA GPU at all.
    with pytest.raises(AllocationError):
        resolve_allocation({"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"}, [], {})


def test_display_active_gpu_is_refused_with_egl_hint() -> None:
    busy = fake_device(0, display_active=True, display_mode=True)
    with pytest.raises(DisplayActiveError) as info:
        check_display_free(busy)
    message = str(info.value)
    assert "active display" in message
    assert "X server" in message
    assert "EGL" in message
    assert busy.xorg_bus_id in message


def test_choose_skips_busy_gpu() -> None:
    busy = fake_device(0, display_active=True)
    free = fake_device(1)
    assert choose_display_gpu([busy, free]) == free
    with pytest.raises(DisplayActiveError, match="EGL"):
        choose_display_gpu([busy])
    with pytest.raises(DisplayActiveError, match="no GPU"):
        choose_display_gpu([])


def test_device_xorg_bus_id() -> None:
    assert fake_device(0, bus=0x06).xorg_bus_id == "PCI:6:0:0"
    assert fake_device(0, bus=0x8A, domain=1).xorg_bus_id == "PCI:138@1:0:0"


@pytest.mark.parametrize(("given", "norm"), [
    ("00000000:3B:00.0", "00000000:3b:00.0"),
    ("0000:3b:00.0", "00000000:3b:00.0"),
    ("3b:00.0", "00000000:3b:00.0"),
])
def test_normalize_bus_id(given: str, norm: str) -> None:
    assert normalize_bus_id(given) == norm


def test_inventory_with_fake_backend() -> None:
    backend = FakeGpuBackend(NODE)
    inv = inventory(backend)
    assert inv.error is None
    assert inv.driver_version == "580.159.04"
    assert len(inv.devices) == 4
    assert (backend.opened, backend.closed) == (1, 1)


def test_inventory_without_driver_never_raises() -> None:
    inv = inventory(FakeGpuBackend(fail="libnvidia-ml.so.1 not found; " + gpu.NO_DRIVER))
    assert inv.devices == []
    assert inv.driver_version is None
    assert inv.error is not None and "software rendering" in inv.error


def test_inventory_survives_a_broken_backend() -> None:
    class Broken(FakeGpuBackend):
        def devices(self) -> list[gpu.Device]:
            raise RuntimeError("GPU fell off the bus")

    backend = Broken(NODE)
    inv = inventory(backend)
    assert inv.devices == [] and "fell off" in (inv.error or "")
    assert backend.closed == 1


def test_real_nvml_backend_on_this_machine() -> None:
    # On a machine without NVIDIA (CI) this is the "no NVIDIA driver" path; on a GPU host
    # it lists real GPUs. Either way: no exception.
    inv = inventory(NvmlBackend())
    if inv.error is not None:
        assert "no NVIDIA driver" in inv.error
    else:
        assert all(dev.uuid.startswith("GPU-") for dev in inv.devices)


def test_nvml_backend_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    inv = inventory(NvmlBackend())
    assert inv.error is not None
    assert "nvidia-ml-py" in inv.error and "no NVIDIA driver" in inv.error


def test_nvml_backend_with_a_fake_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The NVML adapter itself, against a fake pynvml module (a fake, named as one)."""

    class NVMLError(Exception):
        pass

    handles = {0: "h0", 1: "h1"}
    fake = types.SimpleNamespace(
        NVMLError=NVMLError,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"580.159.04",
        nvmlDeviceGetCount=lambda: 3,
        nvmlDeviceGetHandleByIndex=lambda i: handles[i] if i in handles else (_ for _ in ()).throw(
            NVMLError("no permission")),
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(
            busId=b"00000000:00:06.0" if h == "h0" else "00000000:00:07.0"),
        nvmlDeviceGetDisplayActive=lambda h: 0,
        nvmlDeviceGetDisplayMode=lambda h: 1,
        nvmlDeviceGetMigMode=lambda h: (_ for _ in ()).throw(NVMLError("not supported")),
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}",
        nvmlDeviceGetMinorNumber=lambda h: int(h[1]),
        nvmlDeviceGetName=lambda h: "NVIDIA H100 80GB HBM3",
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    inv = inventory(NvmlBackend())
    assert inv.error is None
    assert [d.pci_bus_id for d in inv.devices] == ["00000000:00:06.0", "00000000:00:07.0"]
    first = inv.devices[0]
    assert first.xorg_bus_id == "PCI:0:6:0"
    assert first.display_active is False and first.display_mode is True
    assert first.mig_enabled is False and first.minor == 0


def test_scan_dev_nodes(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).write_text("")
    (tmp_path / "nvidia1").chmod(0)
    nodes = scan_dev_nodes(tmp_path)
    assert set(nodes) == {0, 1}
    assert nodes[0] is True
    if os.geteuid() != 0:  # root opens anything
        assert nodes[1] is False


def test_scan_dev_nodes_missing_dir(tmp_path: Path) -> None:
    assert scan_dev_nodes(tmp_path / "nope") == {}
