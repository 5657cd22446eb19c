"""Which video encoder the desktop stream uses, decided from facts, with the reason told.

* ``auto``: ``nvh264enc`` only when a real NVENC H.264 session opened on the bound GPU
  (:mod:`hpcdesk.node.nvenc`); otherwise ``x264enc``.
* ``x264enc``, ``vp8enc``, ``vp9enc``: as requested (software). ``x264enc-striped`` (H.264
  in horizontal stripes coded in parallel, only the changed ones sent) and ``jpeg`` (striped
  JPEG) are the Selkies 2.x WebSocket-only encoders (host runtime and the Debian image).
* ``nvh264enc`` requested where no NVENC session opens: **falls back** to ``x264enc`` and says
  so, rather than failing the desktop: a slower stream beats no desktop, and the reason
  (shown to the user and recorded in connection.json) names the cause.

Software encoders get half of the job's CPUs (at least 1, at most 8): the other half stays
with the desktop's own programs, and x264 gains little beyond 8 threads at desktop sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hpcdesk.encoders import ENCODERS
from hpcdesk.node.nvenc import NvencResult

__all__ = ["ENCODERS", "EncoderChoice", "decide_encoder", "software_threads", "stream_encoder"]

_SOFTWARE_LABEL = {"x264enc": "H.264", "x264enc-striped": "striped H.264", "jpeg": "JPEG",
                   "vp8enc": "VP8", "vp9enc": "VP9"}
MAX_THREADS = 8


@dataclass(frozen=True)
class EncoderChoice:
    """The GStreamer encoder element, its thread count (0 for hardware) and why."""

    name: str
    threads: int
    reason: str
    fallback: bool = False  # the encoder asked for could not be used: the user is told

    @property
    def hardware(self) -> bool:
        return self.name == "nvh264enc"


def software_threads(cpus: int) -> int:
    """Encoder threads for ``cpus`` allocated CPUs: half of them, 1..8."""
    return max(1, min(MAX_THREADS, max(cpus, 1) // 2))


def _software(name: str, cpus: int, why: str) -> EncoderChoice:
    threads = software_threads(cpus)
    plural = "s" if threads != 1 else ""
    cpu_plural = "s" if cpus != 1 else ""
    return EncoderChoice(
        name,
        threads,
        f"{why}: software {_SOFTWARE_LABEL[name]} ({name}), {threads} thread{plural} "
        f"for {max(cpus, 1)} allocated CPU{cpu_plural}",
    )


def decide_encoder(requested: str, nvenc: NvencResult | None, cpus: int) -> EncoderChoice:
    """Pick the encoder for ``requested`` given the NVENC probe (None: no GPU, not probed).

    Raises ValueError for an encoder name that is not one of :data:`ENCODERS`.
    """
    wanted = requested.strip().lower()
    if wanted not in ENCODERS:
        raise ValueError(f"unknown encoder {requested!r}: choose one of {', '.join(ENCODERS)}")
    works = nvenc is not None and nvenc.available
    if wanted in ("auto", "nvh264enc") and nvenc is not None and works:
        how = "chosen automatically" if wanted == "auto" else "as requested"
        return EncoderChoice("nvh264enc", 0, f"hardware H.264 (nvh264enc), {how}: {nvenc.reason}")
    missing = "no NVIDIA GPU in this job" if nvenc is None else f"no NVENC ({nvenc.reason})"
    short = "no NVIDIA GPU in this job" if nvenc is None else "no NVENC"
    if wanted == "auto":
        detail = "" if nvenc is None else f" ({nvenc.reason})"
        return _software("x264enc", cpus, f"{short} -> x264enc{detail}")
    if wanted == "nvh264enc":
        return replace(_software("x264enc", cpus, f"nvh264enc was requested but {missing}; "
                                                  "fell back to x264enc"), fallback=True)
    why = f"{wanted} as requested"
    if works:
        why += " (NVENC is available: encoder auto would use it)"
    return _software(wanted, cpus, why)


def stream_encoder(interface: str, choice: EncoderChoice) -> EncoderChoice:
    """What really encodes the viewer's stream: the VNC interface's KasmVNC encodes the screen
    itself (JPEG/WebP), whatever desktop.encoder says (which only Selkies uses)."""
    if interface == "vnc":
        return EncoderChoice("kasmvnc", choice.threads, "the VNC interface: KasmVNC encodes "
                             "the screen itself (JPEG/WebP); desktop.encoder applies to Selkies")
    return choice
