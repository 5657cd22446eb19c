"""The node's NVIDIA driver files: where they are (for the doctor and for binding them into
containers), whether the X driver is installed, and the kernel module's version.

A headless or compute-only driver has no X module (``nvidia_drv.so``); the host runtime then
renders in software, and the GLX image cannot run.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["driver_file_paths", "driver_version_from_proc", "has_nvidia_xorg_driver"]

_TRIPLET = f"{platform.machine()}-linux-gnu"
X_MODULE_DIRS = (
    "/usr/lib/xorg/modules/drivers",
    "/usr/lib/xorg/modules/extensions",
    "/usr/lib64/xorg/modules/drivers",
    "/usr/lib64/xorg/modules/extensions",
    f"/usr/lib/{_TRIPLET}/nvidia/xorg",
    "/usr/lib/nvidia/xorg",
    "/usr/lib/nvidia/current",
    "/usr/lib64/nvidia/xorg",
    "/usr/local/lib/xorg/modules/drivers",
    "/usr/local/lib/xorg/modules/extensions",
)
LIB_DIRS = (
    f"/usr/lib/{_TRIPLET}",
    f"/usr/lib/{_TRIPLET}/nvidia/current",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
)
ICD_DIRS = {
    "nvidia_icd.json": (
        "/usr/share/vulkan/icd.d",
        "/etc/vulkan/icd.d",
        "/usr/local/share/vulkan/icd.d",
    ),
    "10_nvidia.json": (
        "/usr/share/glvnd/egl_vendor.d",
        "/etc/glvnd/egl_vendor.d",
        "/usr/local/share/glvnd/egl_vendor.d",
    ),
}
_PATTERNS = {
    # name -> (glob patterns, directories)
    "nvidia_drv.so": (("nvidia_drv.so",), X_MODULE_DIRS),
    "libglxserver_nvidia.so": (("libglxserver_nvidia.so.*", "libglxserver_nvidia.so"),
                               X_MODULE_DIRS),
    "libcuda.so.1": (("libcuda.so.1",), LIB_DIRS),
    "libnvidia-encode.so.1": (("libnvidia-encode.so.1",), LIB_DIRS),
    "libEGL_nvidia.so.0": (("libEGL_nvidia.so.0",), LIB_DIRS),
    "libGLX_nvidia.so.0": (("libGLX_nvidia.so.0",), LIB_DIRS),
    "nvidia_icd.json": (("nvidia_icd.json",), ICD_DIRS["nvidia_icd.json"]),
    "10_nvidia.json": (("10_nvidia.json",), ICD_DIRS["10_nvidia.json"]),
}
def _find(patterns: Sequence[str], dirs: Sequence[str], root: Path) -> Path | None:
    for directory in dirs:
        base = root / directory.lstrip("/")
        for pattern in patterns:
            hits = sorted(base.glob(pattern)) if base.is_dir() else []
            if hits:
                return hits[-1]
    return None


def driver_file_paths(root: Path = Path("/")) -> dict[str, Path | None]:
    """Where this host keeps the NVIDIA files a container needs bound in (None: not found).

    Keys: ``nvidia_drv.so`` and ``libglxserver_nvidia.so`` (the X driver and GLX server
    extension; a headless/compute-only driver has neither), ``libcuda.so.1``,
    ``libnvidia-encode.so.1``, ``libEGL_nvidia.so.0``, ``libGLX_nvidia.so.0``, and the ICD
    files ``nvidia_icd.json`` (Vulkan) and ``10_nvidia.json`` (EGL). ``root`` is for tests.
    """
    return {name: _find(pats, dirs, root) for name, (pats, dirs) in _PATTERNS.items()}


def has_nvidia_xorg_driver(root: Path = Path("/")) -> bool:
    """This node's driver includes the X.Org module (``nvidia_drv.so``)."""
    return driver_file_paths(root).get("nvidia_drv.so") is not None


def driver_version_from_proc(path: Path = Path("/proc/driver/nvidia/version")) -> str | None:
    """The kernel module's version (``580.159.04``), readable even without NVML."""
    try:
        first = path.read_text(errors="replace").splitlines()[0]
    except (OSError, IndexError):
        return None
    match = re.search(r"\b(\d{3,4}\.\d{1,3}(?:\.\d{1,3})?)\b", first)
    return match[1] if match else None
