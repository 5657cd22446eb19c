#!/usr/bin/env python3
"""hpcdesk's desktop images on a real NVIDIA GPU machine (not part of CI; for a lent GPU).

    python3 tests/gpu/image_gpu_check.py [--image KDE_OR_DEBIAN.sif] [--json OUT.json]

Run from a checkout (no install needed; nvidia-ml-py must be importable for the NVML part,
see tests/gpu/README.md). Every step has a time limit and ends in a one-line verdict:

  nvml        NVML's GPUs, each with its Xorg BusID and UUID (the mapping the agent uses)
  nvenc       the NVENC probe's verdict on the first GPU (a real encode session, or why not)
  x-driver    whether the NVIDIA X driver module matching the kernel driver is installed
              (nvidia_drv.so + libglxserver_nvidia.so.VERSION): without it hpcdesk's images
              and the host runtime run Xorg's dummy driver, and the report says what to install
  egl         EGL inside the image with --nv: eglinfo's device platform names the NVIDIA GPU
  xorg-gpu    only with the X driver: the image's Xorg on the GPU with the agent's xorg.conf
              (bound driver files, as the apptainer runtime binds them), glxinfo's renderer

Exit status: 0 when every step that could run passed, 1 otherwise; steps that need what the
machine lacks (an image, the X driver) say SKIP with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
results: list[tuple[str, str, str]] = []


def verdict(name: str, status: str, text: str) -> None:
    results.append((name, status, text))
    print(f"[{status:4}] {name}: {text}", flush=True)


def run(argv: list[str], timeout: float = 60, **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False, **kw)  # type: ignore[call-overload]
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(argv, 124, "", str(exc))


def check_nvml() -> tuple[str | None, str | None]:
    from hpcdesk.node.gpu import bus_id_from_nvml, inventory

    inv = inventory()
    if inv.error or not inv.devices:
        verdict("nvml", "FAIL", inv.error or "NVML lists no GPU")
        return None, None
    for d in inv.devices:
        print(f"    GPU {d.index}: {d.name} {d.uuid} NVML {d.pci_bus_id} -> Xorg "
              f"{bus_id_from_nvml(d.pci_bus_id)} (display active: {d.display_active})")
    first = inv.devices[0]
    verdict("nvml", "ok", f"{len(inv.devices)} GPU(s), driver {inv.driver_version}")
    return first.pci_bus_id, first.uuid


def check_nvenc(bus: str, uuid: str) -> None:
    from hpcdesk.node.nvenc import probe_nvenc

    r = probe_nvenc(pci_bus_id=bus, uuid=uuid)
    verdict("nvenc", "ok", ("NVENC session opened -> nvh264enc" if r.available else
                            f"no NVENC -> x264enc: {r.reason}"))


def check_x_driver() -> bool:
    from hpcdesk.node.driver import (
        driver_file_paths,
        driver_version_from_proc,
        has_nvidia_xorg_driver,
    )

    kernel = driver_version_from_proc()
    files = driver_file_paths()
    glx = files.get("libglxserver_nvidia.so")
    print(f"    kernel driver {kernel}; files: "
          + ", ".join(f"{k}={v}" for k, v in files.items()))
    if not has_nvidia_xorg_driver():
        verdict("x-driver", "MISS",
                f"the NVIDIA X driver module for kernel driver {kernel} is not installed "
                "(no nvidia_drv.so): hpcdesk's images and the host runtime run Xorg's dummy "
                "driver (rendering on the CPU, encoding as the nvenc line says). Install the "
                f"X driver of the same version {kernel} (Debian/Ubuntu: xserver-xorg-video-"
                "nvidia / nvidia-driver-XXX's xserver-xorg-video-nvidia-XXX; RHEL: "
                "nvidia-driver's xorg-x11-nvidia; the .run installer without --no-x-check)")
        return False
    real = os.path.realpath(glx) if glx else ""
    if kernel and glx and kernel not in real:
        verdict("x-driver", "FAIL", f"the X driver ({real}) is not kernel driver {kernel}'s: "
                "Xorg would refuse it (API mismatch); install the matching version")
        return False
    verdict("x-driver", "ok", f"nvidia_drv.so and libglxserver_nvidia for {kernel}")
    return True


def check_egl(image: str) -> None:
    res = run(["apptainer", "exec", "--nv", "--contain", image, "eglinfo", "-B"], timeout=120)
    out = res.stdout + res.stderr
    devices = re.findall(r"EGL vendor string:\s*(.+)", out)
    renderers = re.findall(r"OpenGL(?: core profile)? renderer string:\s*(.+)", out)
    print("    " + "\n    ".join(out.strip().splitlines()[:40]))
    if any("NVIDIA" in v for v in devices) and any("NVIDIA" in r or "GeForce" in r or "H100"
                                                   in r or "H200" in r for r in renderers):
        verdict("egl", "ok", f"EGL on the GPU inside the image: {renderers[0]}")
    else:
        verdict("egl", "FAIL", f"no NVIDIA EGL device inside the image (rc {res.returncode}; "
                f"vendors {devices}, renderers {renderers})")


IMAGE_XORG = r"""
mkdir -p -m 1777 /tmp/.X11-unix
/usr/lib/xorg/Xorg ":$1" -noreset -nolisten tcp -config "$2" -auth "$3" \
    -logfile /tmp/Xorg.log -displayfd 3 3>/tmp/ready 2>/tmp/Xorg.err &
x=$!
i=0
until [ -s /tmp/ready ]; do
    kill -0 "$x" 2>/dev/null || { grep -F '(EE)' /tmp/Xorg.log >&2; exit 1; }
    i=$((i + 1)); [ "$i" -lt 300 ] || { echo "Xorg did not start" >&2; kill "$x"; exit 1; }
    sleep 0.1
done
DISPLAY=":$1" XAUTHORITY=$3 glxinfo -B
rc=$?
kill "$x"; wait "$x"; exit "$rc"
"""


def check_xorg_gpu(image: str, bus: str) -> None:
    from hpcdesk.node.driver import driver_file_paths
    from hpcdesk.node.gpu import bus_id_from_nvml
    from hpcdesk.node.runtime.apptainer import XORG_MODULE_TARGETS
    from hpcdesk.node.xorg_conf import XorgSpec
    from hpcdesk.node.xserver import write_x_files

    work = Path(tempfile.mkdtemp(prefix="hpcdesk-gpucheck-"))
    try:
        x = write_x_files(work, XorgSpec(1920, 1080, driver="nvidia",
                                         bus_id=bus_id_from_nvml(bus)))
        binds = [f"{work}:{work}:ro"]
        for name, target in XORG_MODULE_TARGETS.items():
            host = driver_file_paths().get(name)
            if host:
                binds.append(f"{host}:{target}:ro")
        argv = ["apptainer", "exec", "--nv", "--contain", "--ipc"]
        for b in binds:
            argv += ["--bind", b]
        argv += [image, "/bin/sh", "-c", IMAGE_XORG, "sh", "77", str(x.conf), str(x.xauthority)]
        res = run(argv, timeout=120)
        renderer = re.search(r"OpenGL renderer string:\s*(.+)", res.stdout)
        if res.returncode == 0 and renderer and "llvmpipe" not in renderer[1]:
            verdict("xorg-gpu", "ok", f"the image's Xorg on the GPU: {renderer[1]}")
        else:
            verdict("xorg-gpu", "FAIL", f"rc {res.returncode}: {(res.stderr or res.stdout)[-800:]}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", help="a built hpcdesk image (.sif): kde or debian")
    ap.add_argument("--json", help="write the verdicts here")
    args = ap.parse_args()
    try:
        bus, uuid = check_nvml()
    except Exception as exc:  # NVML binding missing, driver broken: say so and go on
        verdict("nvml", "FAIL", repr(exc))
        bus = uuid = None
    if bus and uuid:
        check_nvenc(bus, uuid)
    has_x = check_x_driver()
    if not args.image or not shutil.which("apptainer"):
        why = "no --image given" if not args.image else "apptainer is not installed"
        verdict("egl", "SKIP", why)
        verdict("xorg-gpu", "SKIP", why)
    else:
        check_egl(args.image)
        if has_x and bus:
            check_xorg_gpu(args.image, bus)
        else:
            verdict("xorg-gpu", "SKIP", "needs the NVIDIA X driver (see x-driver)")
    print("\nVERDICTS:\n" + "\n".join(f"  {n:9} {s:4} {t}" for n, s, t in results))
    if args.json:
        Path(args.json).write_text(json.dumps([dict(zip(("check", "status", "text"), r,
                                                        strict=True)) for r in results],
                                              indent=1))
    return 1 if any(s == "FAIL" for _, s, _ in results) else 0


if __name__ == "__main__":
    sys.exit(main())
