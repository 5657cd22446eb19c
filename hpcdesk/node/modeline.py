"""VESA CVT (Coordinated Video Timing) modelines, as X.Org's ``cvt`` tool computes them.

Two timing families:

* standard CVT (``cvt W H R``), named ``"WxH_R.RR"``, flags ``-hsync +vsync``;
* CVT reduced blanking, version 1 (``cvt -r W H R``), named ``"WxHR"``, flags ``+hsync -vsync``.
  This is what a GPU without a monitor gets in our NVIDIA xorg.conf: the lowest pixel clock.

The arithmetic follows libxcvt step by step, including its single-precision (``float``)
intermediate values, so that the numbers match the ``cvt`` binary exactly (the unit tests
compare them). Two behaviours of ``cvt`` are reproduced on purpose:

* the width is rounded *up* to a multiple of 8 (the CVT character cell): 1366 -> 1368;
* no margins and no interlace.

One behaviour is deliberately different: ``cvt -r`` refuses a refresh rate that is not a
multiple of 60 Hz, because CVT-RB v1 is only specified for those. :func:`cvt_mode` still
computes the reduced-blanking timings for any rate (the formulas are well defined; a 30 Hz
RB mode simply has a longer vertical blank). Pass ``strict=True`` to get ``cvt``'s refusal
as a :class:`ValueError` instead. Nothing here ever runs the ``cvt`` binary.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

__all__ = ["CvtMode", "cvt_mode"]

_H_GRANULARITY = 8  # character cell width in pixels
_MIN_V_PORCH = 3  # lines
_MIN_V_BPORCH = 6  # lines
_CLOCK_STEP_KHZ = 250
# Standard CVT
_MIN_VSYNC_BP_US = 550.0
_HSYNC_PERCENT = 8
_C_PRIME = 30  # (C - J) * K / 256 + J with C=40, J=20, K=128
_M_PRIME = 300  # M * K / 256 with M=600, K=128
# Reduced blanking v1
_RB_MIN_VBLANK_US = 460.0
_RB_H_SYNC = 32
_RB_H_BLANK = 160
_RB_V_FPORCH = 3


def _f32(value: float) -> float:
    """Round to IEEE single precision, as a C ``float`` variable holds it."""
    return ctypes.c_float(value).value


def _vsync_lines(width: int, height: int) -> int:
    """VSync width in lines from the aspect ratio (CVT table 3-1); 10 for a custom ratio."""
    for mod, num, den, lines in ((3, 4, 3, 4), (9, 16, 9, 5), (10, 16, 10, 6), (4, 5, 4, 7),
                                 (9, 15, 9, 7)):
        if height % mod == 0 and height * num // den == width:
            return lines
    return 10


@dataclass(frozen=True)
class CvtMode:
    """One video mode: timings in pixels/lines, pixel clock in MHz, rates as computed."""

    name: str
    pixel_clock_mhz: float
    hdisplay: int
    hsync_start: int
    hsync_end: int
    htotal: int
    vdisplay: int
    vsync_start: int
    vsync_end: int
    vtotal: int
    hsync_polarity: str  # "+" or "-"
    vsync_polarity: str
    reduced: bool
    hsync_khz: float
    vrefresh_hz: float

    @property
    def flags(self) -> str:
        """The modeline's sync flags, e.g. ``"+hsync -vsync"``."""
        return f"{self.hsync_polarity}hsync {self.vsync_polarity}vsync"

    def timings(self) -> str:
        """Everything after the name, spaced exactly as ``cvt`` prints it."""
        return (
            f"{self.pixel_clock_mhz:6.2f}  {self.hdisplay} {self.hsync_start} {self.hsync_end} "
            f"{self.htotal}  {self.vdisplay} {self.vsync_start} {self.vsync_end} {self.vtotal} "
            f"{self.flags}"
        )

    def as_xorg(self) -> str:
        """The xorg.conf line, byte for byte what ``cvt`` prints as its second line."""
        return f'Modeline "{self.name}"  {self.timings()}'


def cvt_mode(width: int, height: int, refresh: float = 60.0, *, reduced: bool = False,
             strict: bool = False, legacy_hsync: bool = False) -> CvtMode:
    """Compute a CVT (or CVT-RB v1 with ``reduced=True``) mode like ``cvt [-r] W H refresh``.

    The standard mode's sync start is rounded up to the character cell (8 px) as libxcvt
    0.1.3 does (Debian 13's ``cvt``); ``legacy_hsync=True`` reproduces libxcvt 0.1.2
    (Debian 12), which added a full cell even when the value was already aligned.

    Raises :class:`ValueError` for non-positive or absurd sizes/rates, and, with
    ``strict=True`` and ``reduced=True``, for a refresh rate that is not a multiple of 60 Hz
    (which ``cvt -r`` refuses).
    """
    if not (0 < width <= 32767 and 0 < height <= 32767):
        raise ValueError(f"mode size {width}x{height} is out of range (1..32767)")
    if not (math.isfinite(refresh) and 0 < refresh <= 1000):
        raise ValueError(f"refresh rate {refresh} Hz is out of range (0..1000]")
    if reduced and strict and refresh % 60 != 0:
        raise ValueError(
            f"CVT reduced blanking v1 is only defined for multiples of 60 Hz, not {refresh} Hz "
            "(cvt -r refuses it too)"
        )
    hdisplay = -(-width // _H_GRANULARITY) * _H_GRANULARITY  # cvt rounds the width up
    vdisplay = height
    field_rate = _f32(refresh)
    vsync = _vsync_lines(hdisplay, vdisplay)

    if not reduced:
        hperiod = _f32(_f32(1000000.0 / field_rate - _MIN_VSYNC_BP_US) / (vdisplay + _MIN_V_PORCH))
        sync_and_bp = int(_MIN_VSYNC_BP_US / hperiod) + 1
        sync_and_bp = max(sync_and_bp, vsync + _MIN_V_PORCH)
        vtotal = vdisplay + sync_and_bp + _MIN_V_PORCH
        blank_pct = _f32(_C_PRIME - _f32(_M_PRIME * hperiod) / 1000.0)
        blank_pct = max(blank_pct, 20.0)
        hblank = int(_f32(hdisplay * blank_pct) / (100.0 - blank_pct))
        hblank -= hblank % (2 * _H_GRANULARITY)
        htotal = hdisplay + hblank
        hsync_end = hdisplay + hblank // 2
        hsync_start = hsync_end - (htotal * _HSYNC_PERCENT) // 100
        if legacy_hsync or hsync_start % _H_GRANULARITY:
            hsync_start += _H_GRANULARITY - hsync_start % _H_GRANULARITY
        name = f"{hdisplay}x{vdisplay}_{refresh:.2f}"
        hpol, vpol = "-", "+"
    else:
        hperiod = _f32(_f32(1000000.0 / field_rate - _RB_MIN_VBLANK_US) / vdisplay)
        vbi_lines = int(_f32(_f32(_RB_MIN_VBLANK_US / hperiod) + 1))
        vbi_lines = max(vbi_lines, _RB_V_FPORCH + vsync + _MIN_V_BPORCH)
        vtotal = vdisplay + vbi_lines
        htotal = hdisplay + _RB_H_BLANK
        hsync_end = hdisplay + _RB_H_BLANK // 2
        hsync_start = hsync_end - _RB_H_SYNC
        name = f"{hdisplay}x{vdisplay}R"
        hpol, vpol = "+", "-"

    if hperiod <= 0:
        raise ValueError(f"refresh rate {refresh} Hz is too high for {width}x{height}")
    clock_khz = int(htotal * 1000.0 / hperiod)
    clock_khz -= clock_khz % _CLOCK_STEP_KHZ
    return CvtMode(
        name=name,
        pixel_clock_mhz=clock_khz / 1000.0,
        hdisplay=hdisplay,
        hsync_start=hsync_start,
        hsync_end=hsync_end,
        htotal=htotal,
        vdisplay=vdisplay,
        vsync_start=vdisplay + _MIN_V_PORCH,
        vsync_end=vdisplay + _MIN_V_PORCH + vsync,
        vtotal=vtotal,
        hsync_polarity=hpol,
        vsync_polarity=vpol,
        reduced=reduced,
        hsync_khz=clock_khz / htotal,
        vrefresh_hz=1000.0 * clock_khz / (htotal * vtotal),
    )
