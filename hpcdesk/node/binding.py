"""Which GPU the desktop runs on, which X driver it uses, and which encoder: decided from facts.

No NVIDIA driver (or no GPU in the job) is not an error: the desktop takes the software path
(Xorg dummy driver + a software encoder) and says so once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal

from hpcdesk.images import is_upstream
from hpcdesk.node import gpu
from hpcdesk.node.driver import has_nvidia_xorg_driver
from hpcdesk.node.encoder import decide_encoder
from hpcdesk.node.errors import StartError
from hpcdesk.node.nvenc import probe_nvenc
from hpcdesk.request import DesktopRequest

log = logging.getLogger(__name__)

SOFTWARE_NOTE = "software rendering (Xorg dummy driver) and a software encoder"


@dataclass
class GpuBinding:
    xorg_driver: Literal["dummy", "nvidia"]
    bus_id: str | None        # Xorg decimal BusID of the bound GPU
    device: gpu.Device | None
    encoder: str
    encoder_threads: int
    encoder_reason: str
    summary: str
    encoder_fallback: bool = False  # the encoder asked for could not be used

    def describe(self) -> dict[str, Any]:
        return {
            "xorg_driver": self.xorg_driver, "bus_id": self.bus_id,
            "uuid": self.device.uuid if self.device else None,
            "name": self.device.name if self.device else None,
            "encoder": self.encoder, "encoder_threads": self.encoder_threads,
            "encoder_reason": self.encoder_reason, "summary": self.summary,
            "encoder_fallback": self.encoder_fallback,
        }


def _software(req: DesktopRequest, why: str) -> GpuBinding:
    choice = decide_encoder(req.desktop.encoder, None, req.cpus)
    log.warning("%s: the desktop uses %s", why, SOFTWARE_NOTE)
    return GpuBinding("dummy", None, None, choice.name, choice.threads, choice.reason,
                      f"{why}; using {SOFTWARE_NOTE}", choice.fallback)


def bind_gpu(req: DesktopRequest, backend: gpu.GpuBackend | None = None) -> GpuBinding:
    if req.gpus == 0:
        return _software(req, "no GPU was requested")
    inv = gpu.inventory(backend)
    if inv.error:
        return _software(req, inv.error)
    try:
        devices, how = gpu.resolve_allocation_explained(os.environ, inv.devices,
                                                        gpu.scan_dev_nodes())
    except gpu.AllocationError as exc:
        raise StartError(f"cannot match Slurm's GPU allocation to this node's GPUs: {exc}") \
            from None
    if not devices:
        return _software(req, f"no NVIDIA GPU found in this job ({how})")
    try:
        device = gpu.choose_display_gpu(devices)
    except gpu.DisplayActiveError as exc:
        raise StartError(str(exc)) from None
    nvenc = probe_nvenc(pci_bus_id=device.pci_bus_id, uuid=device.uuid)
    choice = decide_encoder(req.desktop.encoder, nvenc, req.cpus)
    driver: Literal["dummy", "nvidia"] = "nvidia"
    summary = f"bound {device.label()} ({how})"
    # The host's Xorg, and hpcdesk's images (the host's X driver bound in), fall back to the
    # dummy driver where the node's driver has no X module; the GLX image cannot.
    own_xorg = req.runtime.kind == "host" or not is_upstream(req.runtime.image or "")
    if own_xorg and not has_nvidia_xorg_driver():
        driver = "dummy"
        summary += ("; this node's driver has no Xorg module (nvidia_drv.so), so the X server "
                    "renders in software while encoding may still use the GPU")
    log.info("%s; encoder %s: %s", summary, choice.name, choice.reason)
    return GpuBinding(driver, device.xorg_bus_id, device, choice.name, choice.threads,
                      choice.reason, summary, choice.fallback)
