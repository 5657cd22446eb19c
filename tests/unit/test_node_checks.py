"""`hpcdesk doctor --node` checks: on this machine (no NVIDIA) and on fake GPU nodes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakes_gpu import FakeGpuBackend, fake_device
from tooling import skip_with_gpu

from hpcdesk.checks import Check, checks_to_json, worst
from hpcdesk.node.driver import driver_file_paths, driver_version_from_proc
from hpcdesk.node.gpu import NO_DRIVER, Device
from hpcdesk.node.node_checks import node_checks
from hpcdesk.node.nvenc import NvencResult, nvenc_status_text

H100_NVENC = NvencResult(False, 2, nvenc_status_text(2), step="nvEncOpenEncodeSessionEx")
L40S_NVENC = NvencResult(True, 0, "NVENC H.264 encode session opened on NVIDIA L40S")
NAMES = ["nvidia-driver", "nvml", "dev-nodes", "gpu-allocation", "nvenc", "encoder",
         "x-driver-files", "icd-files", "shm", "xorg", "sound", "x11-unix-dir", "ice-unix-dir",
         "x-lock-files", "display-claims"]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def test_every_non_ok_check_has_a_fix_helper() -> None:
    checks = [Check("a", "ok", "fine"), Check("b", "warn", "hm", "do x"), Check("c", "skip", "")]
    assert worst(checks) == "warn"
    assert worst([*checks, Check("d", "fail", "bad", "do y")]) == "fail"
    assert worst([]) == "ok"
    assert worst([Check("s", "skip", "")]) == "skip"
    assert checks_to_json(checks)[1] == {"name": "b", "status": "warn", "detail": "hm",
                                         "fix": "do x"}
    with pytest.raises(ValueError):
        Check("x", "bad", "")  # type: ignore[arg-type]


# --- this machine: no NVIDIA driver -------------------------------------------------------

def test_on_this_machine_without_nvidia() -> None:
    if Path("/proc/driver/nvidia/version").exists():
        skip_with_gpu("this test covers the machine without a driver")
    checks = node_checks({}, cpus=2)
    found = by_name(checks)
    assert [c.name for c in checks] == NAMES
    assert found["nvidia-driver"].status == "warn"
    assert found["nvidia-driver"].detail == NO_DRIVER
    assert NO_DRIVER == ("no NVIDIA driver: the desktop will use software rendering "
                         "(Xorg dummy driver + x264enc)")
    for name in ("nvml", "dev-nodes", "gpu-allocation", "nvenc", "x-driver-files",
                 "icd-files"):
        assert found[name].status == "ok", found[name]
        assert "no NVIDIA driver" in found[name].detail
    assert found["encoder"].detail.startswith("no NVIDIA GPU in this job -> x264enc")
    assert worst(checks) in ("ok", "warn")
    for check in checks:
        assert check.status == "ok" or check.fix, check


def test_module_main_json_on_this_machine() -> None:
    done = subprocess.run([sys.executable, "-m", "hpcdesk.node.node_checks", "--json"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode in (0, 1), done.stderr
    data = json.loads(done.stdout)
    assert data["worst"] in ("ok", "warn", "fail")
    assert [c["name"] for c in data["checks"]][:3] == NAMES[:3]


# --- fake GPU nodes ------------------------------------------------------------------------

def _touch(root: Path, *paths: str, text: str = "") -> None:
    for rel in paths:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def fake_root(tmp_path: Path, *, x_files: bool, icd: bool, version: str = "580.159.04") -> Path:
    root = tmp_path / "root"
    lib = "usr/lib/x86_64-linux-gnu"
    _touch(root, f"{lib}/libcuda.so.1", f"{lib}/libnvidia-encode.so.1",
           f"{lib}/libEGL_nvidia.so.0")
    if x_files:
        _touch(root, "usr/lib/xorg/modules/drivers/nvidia_drv.so",
               f"usr/lib/xorg/modules/extensions/libglxserver_nvidia.so.{version}")
    if icd:
        _touch(root, "usr/share/vulkan/icd.d/nvidia_icd.json",
               "usr/share/glvnd/egl_vendor.d/10_nvidia.json", text="{}")
    return root


def fake_dev(tmp_path: Path, minors: list[int], modeset: bool = True) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir()
    names = ["nvidiactl", "nvidia-uvm", *(f"nvidia{m}" for m in minors)]
    if modeset:
        names.append("nvidia-modeset")
    for name in names:
        (dev / name).write_text("")
    return dev


def run_fake(tmp_path: Path, devices: list[Device], env: dict[str, str], *,
             nvenc: NvencResult = H100_NVENC, x_files: bool = False, icd: bool = True,
             version: str = "580.159.04", modeset: bool = True) -> dict[str, Check]:
    probed: list[Device] = []

    def probe(device: Device) -> NvencResult:
        probed.append(device)
        return nvenc

    proc = tmp_path / "version"
    proc.write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  "
                    "Release Build  (dvs-builder@U16-I1-N08-12-3)\n")
    checks = node_checks(
        env,
        backend=FakeGpuBackend(devices, version=version),
        dev_dir=fake_dev(tmp_path, [d.minor for d in devices if d.minor is not None], modeset),
        probe=probe,
        root=fake_root(tmp_path, x_files=x_files, icd=icd, version=version),
        cpus=16,
        proc_version=proc,
    )
    for check in checks:
        assert check.status == "ok" or check.fix, check
    found = by_name(checks)
    found["_probed"] = Check("_probed", "ok", ",".join(d.pci_bus_id for d in probed))
    return found


def test_h100_node(tmp_path: Path) -> None:
    h100 = fake_device(0, minor=0, pci_bus_id="00000000:00:06.0", display_mode=True)
    found = run_fake(tmp_path, [h100], {"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": "0"})
    assert found["nvidia-driver"].status == "ok"
    assert "580.159.04" in found["nvidia-driver"].detail
    assert found["gpu-allocation"].status == "ok"
    display = found["display[PCI:0:6:0]"]
    assert display.status == "ok"
    assert "BusID PCI:0:6:0: no active display" in display.detail
    assert found["nvenc"].status == "warn"
    assert found["nvenc"].detail.startswith("no NVENC -> x264enc: NV_ENC_ERR_UNSUPPORTED_DEVICE")
    assert found["encoder"].detail.startswith("no NVENC -> x264enc")
    assert "8 threads" in found["encoder"].detail
    assert found["_probed"].detail == "00000000:00:06.0"
    # FACTS.md: that H100 host had no nvidia_drv.so / libglxserver_nvidia.so
    assert found["x-driver-files"].status == "warn"
    assert "headless" in found["x-driver-files"].detail
    assert "EGL" in found["x-driver-files"].fix
    assert found["icd-files"].status == "ok"


def test_workstation_gpu_with_nvenc_and_x_files(tmp_path: Path) -> None:
    gpus = [fake_device(0, name="NVIDIA L40S"), fake_device(1, name="NVIDIA L40S")]
    found = run_fake(tmp_path, gpus, {"SLURM_JOB_GPUS": "1"}, nvenc=L40S_NVENC, x_files=True)
    assert found["nvenc"].status == "ok"
    assert found["encoder"].detail.startswith("hardware H.264 (nvh264enc)")
    assert found["_probed"].detail == gpus[1].pci_bus_id
    assert found["x-driver-files"].status == "ok"
    assert "display[PCI:16:0:0]" not in found
    assert found["display[PCI:48:0:0]"].status == "ok"


def test_display_active_gpu_fails_with_egl_fix(tmp_path: Path) -> None:
    busy = fake_device(0, display_active=True, display_mode=True)
    found = run_fake(tmp_path, [busy], {"SLURM_JOB_GPUS": "0"})
    display = found[f"display[{busy.xorg_bus_id}]"]
    assert display.status == "fail"
    assert "EGL" in display.detail and "EGL" in display.fix
    assert found["nvenc"].detail.startswith("no usable GPU")
    assert found["_probed"].detail == ""


def test_old_and_ancient_drivers(tmp_path: Path) -> None:
    gpus = [fake_device(0)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    old = run_fake(tmp_path / "a", gpus, {"SLURM_JOB_GPUS": "0"}, version="460.91.03")
    assert old["nvidia-driver"].status == "warn" and "470.42.01" in old["nvidia-driver"].fix
    ancient = run_fake(tmp_path / "b", gpus, {"SLURM_JOB_GPUS": "0"}, version="418.226.00")
    assert ancient["nvidia-driver"].status == "fail"


def test_allocation_mismatch_and_no_gpu_job(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    gpus = [fake_device(0)]
    bad = run_fake(tmp_path / "a", gpus, {"SLURM_JOB_GPUS": "5"})
    assert bad["gpu-allocation"].status == "fail"
    none = run_fake(tmp_path / "b", gpus, {})
    assert none["gpu-allocation"].status == "warn"
    assert "--gres=gpu:1" in none["gpu-allocation"].fix
    assert none["encoder"].detail.startswith("no NVIDIA GPU in this job -> x264enc")


def test_missing_icd_and_modeset(tmp_path: Path) -> None:
    found = run_fake(tmp_path, [fake_device(0)], {"SLURM_JOB_GPUS": "0"}, icd=False,
                     modeset=False)
    assert found["icd-files"].status == "warn"
    assert "nvidia_icd.json" in found["icd-files"].detail
    assert found["dev-nodes"].status == "warn"
    assert "nvidia-modeset" in found["dev-nodes"].fix


def test_driver_present_but_nvml_missing(tmp_path: Path) -> None:
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12\n")
    checks = by_name(node_checks(
        {"SLURM_JOB_GPUS": "0"},
        backend=FakeGpuBackend(fail="the Python NVML binding is missing"),
        dev_dir=fake_dev(tmp_path, [0]),
        probe=lambda d: H100_NVENC,
        root=tmp_path / "empty",
        cpus=2,
        proc_version=proc,
    ))
    assert checks["nvidia-driver"].status == "ok"
    assert checks["nvml"].status == "fail" and "nvidia-ml-py" in checks["nvml"].fix
    assert checks["gpu-allocation"].status == "fail"


def test_small_shm(tmp_path: Path) -> None:
    small = Path("/run/lock")  # usually a 5 MiB tmpfs
    checks = by_name(node_checks({}, backend=FakeGpuBackend(fail=NO_DRIVER), shm=small,
                                 dev_dir=tmp_path, root=tmp_path, cpus=1,
                                 proc_version=tmp_path / "none"))
    if small.exists() and checks["shm"].detail.startswith(f"{small} is 0."):
        assert checks["shm"].status == "warn" and "1 GiB" in checks["shm"].fix
    missing = by_name(node_checks({}, backend=FakeGpuBackend(fail=NO_DRIVER),
                                  shm=tmp_path / "noshm", dev_dir=tmp_path, root=tmp_path,
                                  cpus=1, proc_version=tmp_path / "none"))
    assert missing["shm"].status == "warn"


def test_no_xorg(tmp_path: Path) -> None:
    checks = by_name(node_checks({}, backend=FakeGpuBackend(fail=NO_DRIVER), dev_dir=tmp_path,
                                 root=tmp_path, cpus=1, proc_version=tmp_path / "none",
                                 xorg_candidates=[str(tmp_path / "Xorg")],
                                 dummy_dirs=[str(tmp_path)]))
    xorg = checks["xorg"]
    if xorg.status != "ok":  # an Xorg may still be on PATH
        assert xorg.status == "warn" and xorg.fix


def test_driver_file_paths(tmp_path: Path) -> None:
    root = fake_root(tmp_path, x_files=True, icd=True, version="550.54.15")
    paths = driver_file_paths(root)
    assert paths["nvidia_drv.so"] == root / "usr/lib/xorg/modules/drivers/nvidia_drv.so"
    glx = paths["libglxserver_nvidia.so"]
    assert glx is not None and glx.name == "libglxserver_nvidia.so.550.54.15"
    assert paths["nvidia_icd.json"] == root / "usr/share/vulkan/icd.d/nvidia_icd.json"
    assert paths["10_nvidia.json"] == root / "usr/share/glvnd/egl_vendor.d/10_nvidia.json"
    assert paths["libGLX_nvidia.so.0"] is None
    empty = driver_file_paths(tmp_path / "nothing")
    assert set(empty) == set(paths) and all(v is None for v in empty.values())


@pytest.mark.parametrize(("line", "version"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC "
     "2024", "535.183.01"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build",
     "580.159.04"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.42  Tue", "470.42"),
    ("garbage", None),
])
def test_driver_version_from_proc(tmp_path: Path, line: str, version: str | None) -> None:
    path = tmp_path / "version"
    path.write_text(line + "\nGCC version: gcc version 12.2.0\n")
    assert driver_version_from_proc(path) == version
    assert driver_version_from_proc(tmp_path / "missing") is None
