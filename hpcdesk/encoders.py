"""The encoders `desktop.encoder` may name: the one list (the schema, the command line, the
Open OnDemand form and the node's decision in node/encoder.py all read it). Tiny on purpose:
`hpcdesk --help` imports it.
"""

from __future__ import annotations

from typing import Literal, get_args

Encoder = Literal["auto", "nvh264enc", "x264enc", "x264enc-striped", "jpeg", "vp8enc", "vp9enc"]
ENCODERS: tuple[str, ...] = get_args(Encoder)
HARDWARE_ENCODERS = ("nvh264enc",)  # need a GPU with NVENC (else x264enc, and users are told)
