"""`hpcdesk doctor --node`: can this node, in this allocation, run a GPU desktop? And if not, why.

Every check runs on every node. Where there is no NVIDIA driver (a CPU node, the dev cluster)
each GPU check says so and the result is the software path, never a crash. Every check that
is not ``ok`` names its fix. Also runnable alone: ``python -m hpcdesk.node.node_checks --json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from hpcdesk.checks import Check, checks_to_json, worst
from hpcdesk.node import sound
from hpcdesk.node.driver import ICD_DIRS, driver_file_paths, driver_version_from_proc
from hpcdesk.node.encoder import decide_encoder
from hpcdesk.node.gpu import (
    NO_DRIVER,
    AllocationError,
    Device,
    DisplayActiveError,
    GpuBackend,
    GpuInventory,
    check_display_free,
    inventory,
    resolve_allocation_explained,
    scan_dev_nodes,
)
from hpcdesk.node.neighbour_checks import neighbour_checks
from hpcdesk.node.nvenc import NvencResult, probe_nvenc

__all__ = ["main", "node_checks"]

MIN_DRIVER = (450, 80, 2)
RECOMMENDED_DRIVER = (470, 42, 1)
SHM_MIN_BYTES = 1 << 30
GPU_NVENC = "L4, L40S, A10, A40, RTX"

XORG_CANDIDATES = ("/usr/lib/xorg/Xorg", "/usr/libexec/Xorg", "/usr/lib/Xorg")
DUMMY_DRIVER_DIRS = ("/usr/lib/xorg/modules/drivers", "/usr/lib64/xorg/modules/drivers")

Prober = Callable[[Device], NvencResult]
SoundProber = Callable[[], tuple[bool, str]]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def _driver_check(inv: GpuInventory, proc_version: str | None) -> Check:
    version = inv.driver_version or proc_version
    if version is None:
        return Check("nvidia-driver", "warn", NO_DRIVER,
                     "nothing to do on a CPU node; on a GPU node install the NVIDIA driver "
                     "(470.42.01 or newer) and load its kernel module")
    found = _version_tuple(version)
    if found < MIN_DRIVER:
        return Check("nvidia-driver", "fail", f"driver {version} is older than 450.80.02",
                     "update the NVIDIA driver to 470.42.01 or newer")
    if found < RECOMMENDED_DRIVER:
        return Check("nvidia-driver", "warn",
                     f"driver {version} works, but releases before 470.42.01 lack fixes for "
                     "X servers without a monitor", "update the NVIDIA driver to 470.42.01+")
    return Check("nvidia-driver", "ok", f"driver {version}")


def _nvml_check(inv: GpuInventory, proc_version: str | None) -> Check:
    if inv.error is None:
        names = ", ".join(sorted({dev.name for dev in inv.devices})) or "no GPU visible"
        return Check("nvml", "ok", f"NVML loaded: {len(inv.devices)} GPU(s) ({names})")
    if proc_version is None:
        return Check("nvml", "ok", inv.error)
    return Check("nvml", "fail", f"the driver {proc_version} is loaded but {inv.error}",
                 "pip install nvidia-ml-py into hpcdesk's environment, and make "
                 "libnvidia-ml.so.1 visible (ldconfig, or bind it into the container)")


def _dev_check(dev_dir: Path, nodes: Mapping[int, bool], have_driver: bool) -> Check:
    if not have_driver:
        return Check("dev-nodes", "ok", NO_DRIVER)
    ctl = dev_dir / "nvidiactl"
    missing = [name for name in ("nvidiactl", "nvidia-modeset", "nvidia-uvm")
               if not (dev_dir / name).exists()]
    if not ctl.exists() or not nodes:
        return Check("dev-nodes", "fail", f"no {dev_dir}/nvidiactl or {dev_dir}/nvidiaN",
                     "load the NVIDIA kernel modules (nvidia-modprobe, or modprobe nvidia) or "
                     "bind /dev/nvidia* into the container")
    listing = ", ".join(f"nvidia{m}{'' if ok else ' (denied)'}" for m, ok in nodes.items())
    if not any(nodes.values()):
        return Check("dev-nodes", "fail", f"no /dev/nvidiaN can be opened: {listing}",
                     "ask Slurm for a GPU (--gres=gpu:1); with device cgroups only the "
                     "allocated GPUs can be opened")
    if "nvidia-modeset" in missing:
        return Check("dev-nodes", "warn", f"{listing}; /dev/nvidia-modeset is missing",
                     "Xorg's nvidia driver needs /dev/nvidia-modeset: load the nvidia-modeset "
                     "module (modprobe nvidia-modeset) or bind the device into the container")
    return Check("dev-nodes", "ok", listing + (f"; missing {', '.join(missing)}" if missing
                                                else ""))


def _allocation_checks(env: Mapping[str, str], inv: GpuInventory, nodes: Mapping[int, bool],
                       have_driver: bool) -> tuple[list[Check], list[Device]]:
    if inv.error is not None and have_driver:
        return [Check("gpu-allocation", "fail", f"cannot map the allocation: {inv.error}",
                      "make NVML usable (see the nvml check)")], []
    if inv.error is not None:
        return [Check("gpu-allocation", "ok", NO_DRIVER)], []
    try:
        chosen, how = resolve_allocation_explained(env, inv.devices, nodes)
    except AllocationError as exc:
        return [Check("gpu-allocation", "fail", str(exc),
                      "run inside the Slurm job that holds the GPU, and check gres.conf")], []
    if not chosen:
        return [Check("gpu-allocation", "warn", f"{how}: the desktop will use software "
                      "rendering", "ask for a GPU (e.g. --gres=gpu:1) for a GPU desktop")], []
    checks = [Check("gpu-allocation", "ok",
                    f"{how}: " + "; ".join(dev.label() for dev in chosen))]
    for dev in chosen:
        checks.append(_display_check(dev))
    return checks, chosen


def _display_check(dev: Device) -> Check:
    name = f"display[{dev.xorg_bus_id}]"
    try:
        check_display_free(dev)
    except DisplayActiveError as exc:
        return Check(name, "fail", str(exc),
                     "use the EGL flavour (flavour: egl), or ask for a GPU without a display")
    outputs = {True: "NVML display mode enabled", False: "NVML display mode disabled",
               None: "NVML display mode unknown"}[dev.display_mode]
    return Check(name, "ok", f"BusID {dev.xorg_bus_id}: no active display ({outputs}); "
                             f"the desktop's own Xorg can use it")


def _nvenc_checks(chosen: Sequence[Device], probe: Prober, encoder: str,
                  cpus: int) -> list[Check]:
    usable = [dev for dev in chosen if not dev.display_active and not dev.mig_enabled]
    result = probe(usable[0]) if usable else None
    checks: list[Check] = []
    if result is None:
        checks.append(Check("nvenc", "ok", NO_DRIVER if not chosen else
                            "no usable GPU to probe: software encoding (x264enc)"))
    elif result.available:
        checks.append(Check("nvenc", "ok", result.reason))
    else:
        checks.append(Check("nvenc", "warn", f"no NVENC -> x264enc: {result.reason}",
                            "nothing to do: the desktop encodes in software; for hardware "
                            f"encoding ask for a GPU that has NVENC ({GPU_NVENC})"))
    try:
        choice = decide_encoder(encoder, result, cpus)
    except ValueError as exc:
        checks.append(Check("encoder", "fail", str(exc), "set encoder to auto"))
    else:
        checks.append(Check("encoder", "ok", choice.reason))
    return checks


def _x_files_check(files: Mapping[str, Path | None], version: str | None) -> Check:
    if version is None:
        return Check("x-driver-files", "ok", f"not needed: {NO_DRIVER}")
    drv, glx = files["nvidia_drv.so"], files["libglxserver_nvidia.so"]
    if drv is None or glx is None:
        absent = " and ".join(n for n in ("nvidia_drv.so", "libglxserver_nvidia.so")
                              if files[n] is None)
        return Check("x-driver-files", "warn",
                     f"this host's NVIDIA driver {version} is headless (compute only): no "
                     f"{absent}, so an Xorg on the GPU cannot start from the host's files",
                     "use an image that carries the X driver of exactly version "
                     f"{version}, ask the admins to install the driver's X component "
                     "(e.g. the xorg/X11 package of the same driver version), or use the "
                     "EGL flavour")
    glx_version = re.search(r"\.so\.(\d[\d.]*)$", glx.name)
    if glx_version and glx_version[1] != version:
        return Check("x-driver-files", "warn",
                     f"{glx} is version {glx_version[1]}, the driver is {version}",
                     "install the X component of the same driver version")
    return Check("x-driver-files", "ok", f"{drv}, {glx}")


def _icd_check(files: Mapping[str, Path | None], version: str | None) -> Check:
    found = {name: files[name] for name in ICD_DIRS}
    if version is None:
        return Check("icd-files", "ok", f"not needed: {NO_DRIVER}")
    missing = [name for name, path in found.items() if path is None]
    if missing:
        where = "; ".join(f"{name} in {' or '.join(ICD_DIRS[name])}" for name in missing)
        return Check("icd-files", "warn", f"not found: {where}",
                     "install the driver's Vulkan/EGL ICD files (part of the driver's GL "
                     "libraries), or use an image that has them: without them Vulkan or EGL "
                     "falls back to software")
    return Check("icd-files", "ok", ", ".join(str(path) for path in found.values()))


def _shm_check(shm: Path) -> Check:
    try:
        stat = os.statvfs(shm)
    except OSError as exc:
        return Check("shm", "warn", f"{shm} is not usable ({exc.strerror})",
                     "mount a tmpfs on /dev/shm: browsers and the desktop need shared memory")
    size = stat.f_frsize * stat.f_blocks
    gib = size / (1 << 30)
    if size < SHM_MIN_BYTES:
        return Check("shm", "warn", f"{shm} is {gib:.2f} GiB (browsers crash with < 1 GiB)",
                     "enlarge /dev/shm (tmpfs size=, or the container's shm size) to 1 GiB "
                     "or more")
    return Check("shm", "ok", f"{shm} is {gib:.1f} GiB")


def _xorg_check(candidates: Sequence[str], dummy_dirs: Sequence[str]) -> Check:
    xorg = next((p for p in candidates if Path(p).is_file()), None) or shutil.which("Xorg")
    if xorg is None:
        return Check("xorg", "warn", "no Xorg binary on this node",
                     "install Xorg (Debian: xserver-xorg-core xserver-xorg-video-dummy) for "
                     "the host runtime, or use the apptainer runtime, whose image has it")
    dummy = next((Path(d) / "dummy_drv.so" for d in dummy_dirs
                  if (Path(d) / "dummy_drv.so").is_file()), None)
    if dummy is None:
        return Check("xorg", "warn", f"{xorg} found, but not the dummy driver",
                     "install xserver-xorg-video-dummy: the software desktop needs it")
    return Check("xorg", "ok", f"{xorg}; dummy driver {dummy}")


def _sound_check(probe: SoundProber) -> Check:
    ok, detail = probe()
    if ok:
        return Check("sound", "ok", detail)
    return Check("sound", "warn", f"desktops here start without sound: {detail}",
                 f"install {sound.PACKAGES} on the node (Debian); hpcdesk's own images (debian, "
                 "kde) bring their own; or set desktop.audio: false")


def _default_probe(device: Device) -> NvencResult:
    return probe_nvenc(pci_bus_id=device.pci_bus_id)


def _default_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def node_checks(
    env: Mapping[str, str] | None = None,
    *,
    backend: GpuBackend | None = None,
    dev_dir: Path = Path("/dev"),
    probe: Prober = _default_probe,
    root: Path = Path("/"),
    shm: Path = Path("/dev/shm"),
    encoder: str = "auto",
    cpus: int | None = None,
    proc_version: Path = Path("/proc/driver/nvidia/version"),
    xorg_candidates: Sequence[str] = XORG_CANDIDATES,
    dummy_dirs: Sequence[str] = DUMMY_DRIVER_DIRS,
    sound_probe: SoundProber = sound.probe,
) -> list[Check]:
    """Every node check, in a fixed order; every argument can be swapped for a test."""
    env = os.environ if env is None else env
    inv = inventory(backend)
    kernel_version = driver_version_from_proc(proc_version)
    version = inv.driver_version or kernel_version
    nodes = scan_dev_nodes(dev_dir)
    files = driver_file_paths(root)
    checks = [
        _driver_check(inv, kernel_version),
        _nvml_check(inv, kernel_version),
        _dev_check(dev_dir, nodes, version is not None),
    ]
    allocation, chosen = _allocation_checks(env, inv, nodes, version is not None)
    checks += allocation
    checks += _nvenc_checks(chosen, probe, encoder, cpus or _default_cpus())
    checks += [
        _x_files_check(files, version),
        _icd_check(files, version),
        _shm_check(shm),
        _xorg_check(xorg_candidates, dummy_dirs),
        _sound_check(sound_probe),
    ]
    checks += neighbour_checks()  # what other users did to the node-wide names
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hpcdesk.node.node_checks",
                                     description="Check this node for a GPU desktop.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--encoder", default="auto", help="the encoder setting to decide for")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the allocation")
    args = parser.parse_args(argv)
    checks = node_checks(encoder=args.encoder, cpus=args.cpus)
    overall = worst(checks)
    if args.json:
        print(json.dumps({"worst": overall, "checks": checks_to_json(checks)}, indent=2))
    else:
        for check in checks:
            print(f"[{check.status:>4}] {check.name}: {check.detail}")
            if check.fix:
                print(f"       fix: {check.fix}")
        print(f"overall: {overall}")
    return 1 if overall == "fail" else 0


if __name__ == "__main__":
    sys.exit(main())
