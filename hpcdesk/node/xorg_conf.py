"""xorg.conf for the desktop's own X server: the dummy driver (no GPU) or NVIDIA (one GPU).

The one generator of X configuration: the host runtime's Xorg and the images' Xorg (the Debian
image's dummy driver, the GLX image's GPU) all start with the file rendered here
(xserver.write_x_files); the images generate none of their own. Modelines come from
modeline.py, which matches ``cvt`` byte for byte.

Both variants give an X screen of exactly ``width x height``:

* ``dummy``: a CVT reduced-blanking modeline for the size, a monitor that accepts it (wide
  sync ranges and ``ReducedBlanking``), a pixel clock limit (``DacSpeed``) above the mode's,
  enough ``VideoRam`` for the framebuffer and ``Virtual`` pinned to the size. Without these
  the server rejects the mode and falls back to a built-in one (1920x1080 asked, 1400x1050
  given: the log says "monitor doesn't support reduced blanking").
* ``nvidia``: the GPU by its decimal ``BusID``, a faked monitor on ``video_port`` (``DFP``,
  ``DP-N``) or no display device at all (``none``), a CVT reduced-blanking modeline, the mode
  validation relaxations that let a GPU without a monitor accept it, and ``AutoAddGPU`` off
  so that the server never touches another job's GPU.

Resolution limits (:class:`ResolutionError`, raised by :func:`check_resolution` and by
:func:`render_xorg_conf`) instead of a silent black screen:

* ``DFP``: the driver emulates a dual-link DVI panel, whose maximum is 2560x1600; datacenter
  GPUs (no physical outputs) do not light up anything larger on it. Use ``DP-0``.
* ``DP-N``: up to 7680x4320 (DisplayPort with DSC).
* ``none`` and ``dummy``: up to 16384x16384 (the X screen has no output to limit it).

Every file also disables hot-plugged input devices, so that an Xorg started as root can
never grab the node's keyboard or mouse (the desktop is driven through XTEST), and turns off
screen blanking and DPMS, which would stream a black screen after ten idle minutes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal

from hpcdesk.node.modeline import CvtMode, cvt_mode

__all__ = [
    "ResolutionError",
    "XorgSpec",
    "check_resolution",
    "render_xorg_conf",
    "xorg_mode",
]

DFP_MAX = (2560, 1600)
DP_MAX = (7680, 4320)
SCREEN_MAX = (16384, 16384)

# What the upstream GLX desktop image relaxes so that a GPU without a monitor takes any mode.
MODE_VALIDATION = ",".join(
    (
        "NoMaxPClkCheck",
        "NoEdidMaxPClkCheck",
        "NoMaxSizeCheck",
        "NoHorizSyncCheck",
        "NoVertRefreshCheck",
        "NoVirtualSizeCheck",
        "NoExtendedGpuCapabilitiesCheck",
        "NoTotalSizeCheck",
        "NoDualLinkDVICheck",
        "NoDisplayPortBandwidthCheck",
        "AllowNon3DVisionModes",
        "AllowNonHDMI3DModes",
        "AllowNonEdidModes",
        "NoEdidHDMI2Check",
        "AllowDpInterlaced",
    )
)

_BUS_ID_RE = re.compile(r"^PCI:\d{1,3}(@\d{1,5})?:\d{1,2}:\d$")
_VIDEO_PORT_RE = re.compile(r"^(DFP(-\d+)?|DP-\d+|none)$", re.IGNORECASE)


class ResolutionError(ValueError):
    """The requested screen size cannot work on this driver/port; the message says what will."""


@dataclass(frozen=True)
class XorgSpec:
    """What the X server should be. ``bus_id`` is Xorg's decimal form (gpu.bus_id_from_nvml)."""

    width: int
    height: int
    refresh: int = 60
    depth: int = 24
    dpi: int = 96
    driver: Literal["dummy", "nvidia"] = "dummy"
    bus_id: str | None = None
    video_port: str = "DFP"

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ResolutionError(f"screen size {self.width}x{self.height} must be positive")
        if not 1 <= self.refresh <= 240:
            raise ValueError(f"refresh rate {self.refresh} Hz is out of range (1..240)")
        if self.depth not in (16, 24, 30):
            raise ValueError(f"colour depth {self.depth} is not supported (use 24, 30 or 16)")
        if not 24 <= self.dpi <= 960:
            raise ValueError(f"dpi {self.dpi} is out of range (24..960)")
        if self.driver not in ("dummy", "nvidia"):
            raise ValueError(f"unknown X driver {self.driver!r} (use dummy or nvidia)")
        if not _VIDEO_PORT_RE.match(self.video_port):
            raise ValueError(
                f"video_port {self.video_port!r} is not DFP, DP-N (DP-0, DP-1, ...) or none"
            )
        if self.driver == "nvidia":
            if self.bus_id is None:
                raise ValueError(
                    "the nvidia X driver needs the allocated GPU's BusID; without it Xorg "
                    "would take the first GPU of the node, possibly another job's"
                )
            if not _BUS_ID_RE.match(self.bus_id):
                raise ValueError(
                    f"BusID {self.bus_id!r} is not Xorg's decimal form PCI:BUS[@DOMAIN]:DEV:FUNC "
                    "(convert NVML's hex id with gpu.bus_id_from_nvml)"
                )


def check_resolution(spec: XorgSpec) -> None:
    """Raise :class:`ResolutionError` when the size cannot work on this driver and port."""
    port = spec.video_port.upper()
    if spec.driver == "nvidia" and port.startswith("DFP"):
        limit, why = DFP_MAX, (
            "video_port DFP emulates a dual-link DVI panel (at most 2560x1600; datacenter "
            "GPUs stay black beyond it); set video_port to DP-0 for larger screens"
        )
    elif spec.driver == "nvidia" and port.startswith("DP-"):
        limit, why = DP_MAX, "DisplayPort tops out at 7680x4320 (8K)"
    else:
        limit, why = SCREEN_MAX, "an X screen is at most 16384x16384 here"
    if spec.width > limit[0] or spec.height > limit[1]:
        raise ResolutionError(
            f"{spec.width}x{spec.height} is too large for the {spec.driver} driver on "
            f"video_port {spec.video_port}: {why}; ask for at most {limit[0]}x{limit[1]}"
        )


def xorg_mode(spec: XorgSpec) -> CvtMode:
    """The modeline used for this spec: CVT reduced blanking at the requested refresh rate.

    CVT-RB is defined for multiples of 60 Hz; other rates (30, 50 Hz) use the same formulas,
    which the relaxed NVIDIA mode validation and the dummy driver both accept.
    For a width that is not a multiple of 8 (1366), cvt computes the timings for the next
    multiple (1368); the active width is then set back to the exact size, which keeps the
    sync pulses inside the blanking, so that the mode is never wider than the screen.
    """
    mode = cvt_mode(spec.width, spec.height, float(spec.refresh), reduced=True)
    if mode.hdisplay == spec.width:
        return mode
    return replace(mode, hdisplay=spec.width, name=f"{spec.width}x{spec.height}R")


def _mode_name(spec: XorgSpec) -> str:
    return xorg_mode(spec).name


def _modeline(spec: XorgSpec) -> str:
    return xorg_mode(spec).as_xorg()


def _video_ram_kib(spec: XorgSpec) -> int:
    """Framebuffer for the dummy driver: the virtual screen, pitch aligned, plus 25 %, in KiB."""
    bytes_per_pixel = 2 if spec.depth == 16 else 4
    pitch = -(-spec.width // 64) * 64
    needed = pitch * spec.height * bytes_per_pixel * 1.25
    return max(16384, math.ceil(needed / 1024 / 1024) * 1024)


def _dac_speed_mhz(spec: XorgSpec) -> int:
    return max(1000, math.ceil(xorg_mode(spec).pixel_clock_mhz / 100 + 1) * 100)


def _display_size_mm(spec: XorgSpec) -> tuple[int, int]:
    return round(spec.width * 25.4 / spec.dpi), round(spec.height * 25.4 / spec.dpi)


def _head(spec: XorgSpec) -> list[str]:
    return [
        f"# Generated by hpcdesk: {spec.driver} driver, {spec.width}x{spec.height} "
        f"@ {spec.refresh} Hz, depth {spec.depth}, {spec.dpi} dpi. Do not edit: regenerated "
        "for every desktop.",
        "",
        'Section "ServerFlags"',
        '    Option "AutoAddGPU" "false"',
        '    Option "AutoAddDevices" "false"',
        '    Option "AutoEnableDevices" "false"',
        '    Option "DontVTSwitch" "true"',
        '    Option "DontZap" "true"',
        # A streamed desktop has no one at a console: never blank or power down the screen.
        '    Option "BlankTime" "0"',
        '    Option "StandbyTime" "0"',
        '    Option "SuspendTime" "0"',
        '    Option "OffTime" "0"',
        "EndSection",
        "",
        'Section "ServerLayout"',
        '    Identifier "hpcdesk-layout"',
        '    Screen 0 "hpcdesk-screen"',
        "EndSection",
        "",
    ]


def _monitor(spec: XorgSpec) -> list[str]:
    width_mm, height_mm = _display_size_mm(spec)
    return [
        'Section "Monitor"',
        '    Identifier "hpcdesk-monitor"',
        "    HorizSync 1.0 - 2000.0",
        "    VertRefresh 1.0 - 500.0",
        f"    DisplaySize {width_mm} {height_mm}",
        f"    {_modeline(spec)}",
        # Without it the X server's mode validation drops every reduced-blanking mode.
        '    Option "ReducedBlanking" "true"',
        "EndSection",
        "",
    ]


def _screen(spec: XorgSpec, options: list[str]) -> list[str]:
    return [
        'Section "Screen"',
        '    Identifier "hpcdesk-screen"',
        '    Device "hpcdesk-device"',
        '    Monitor "hpcdesk-monitor"',
        f"    DefaultDepth {spec.depth}",
        *(f"    {line}" for line in options),
        '    SubSection "Display"',
        f"        Depth {spec.depth}",
        f'        Modes "{_mode_name(spec)}"',
        f"        Virtual {spec.width} {spec.height}",
        "    EndSubSection",
        "EndSection",
        "",
    ]


def _dummy_device(spec: XorgSpec) -> list[str]:
    return [
        'Section "Device"',
        '    Identifier "hpcdesk-device"',
        '    Driver "dummy"',
        f"    VideoRam {_video_ram_kib(spec)}",
        # The dummy driver's default pixel clock limit (300 MHz) rejects 4K modes.
        f"    DacSpeed {_dac_speed_mhz(spec)}",
        "EndSection",
        "",
    ]


def _nvidia_device(spec: XorgSpec) -> list[str]:
    port = spec.video_port
    if port.lower() == "none":
        display = ['Option "UseDisplayDevice" "none"']
    else:
        display = [f'Option "ConnectedMonitor" "{port.upper()}"']
    lines = [
        'Section "Device"',
        '    Identifier "hpcdesk-device"',
        '    Driver "nvidia"',
        '    VendorName "NVIDIA Corporation"',
        f'    BusID "{spec.bus_id}"',
        *(f"    {line}" for line in display),
        f'    Option "ModeValidation" "{MODE_VALIDATION}"',
        '    Option "ProbeAllGpus" "false"',
        '    Option "UseEdidDpi" "false"',
        f'    Option "DPI" "{spec.dpi} x {spec.dpi}"',
        '    Option "SLI" "off"',
        '    Option "MultiGPU" "off"',
        '    Option "BaseMosaic" "off"',
        '    Option "HardDPMS" "false"',
        "EndSection",
        "",
    ]
    return lines


def render_xorg_conf(spec: XorgSpec) -> str:
    """The complete xorg.conf text for ``spec``; raises ResolutionError for impossible sizes."""
    check_resolution(spec)
    if spec.driver == "dummy":
        lines = _head(spec) + _dummy_device(spec) + _monitor(spec) + _screen(spec, [])
    else:
        screen_options = [
            'Option "AllowEmptyInitialConfiguration" "true"',
            'Option "IncludeImplicitMetaModes" "true"',
        ]
        lines = (
            _head(spec) + _nvidia_device(spec) + _monitor(spec) + _screen(spec, screen_options)
        )
    return "\n".join(lines)
