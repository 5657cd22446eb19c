"""The X files every runtime and image gets: one cookie writer, one xorg.conf writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk.node.errors import StartError
from hpcdesk.node.xorg_conf import XorgSpec, render_xorg_conf
from hpcdesk.node.xserver import write_x_files


def test_cookie_and_config(tmp_path: Path) -> None:
    spec = XorgSpec(2560, 1440)
    x = write_x_files(tmp_path, spec)
    data = x.xauthority.read_bytes()
    # FamilyWild, empty address and display number: the cookie is valid for any display.
    assert data[:8] == b"\xff\xff\x00\x00\x00\x00\x00\x12"
    assert data[8:26] == b"MIT-MAGIC-COOKIE-1" and data[26:28] == b"\x00\x10"
    assert len(data) == 44
    assert x.conf is not None and x.conf.read_text() == render_xorg_conf(spec)
    for path in (x.xauthority, x.conf):
        assert path.stat().st_mode & 0o777 == 0o600
    again = write_x_files(tmp_path, None)  # Xvfb: the cookie only, a fresh one
    assert again.conf is None and again.xauthority.read_bytes()[28:] != data[28:]


def test_impossible_screen_is_a_start_error(tmp_path: Path) -> None:
    spec = XorgSpec(3840, 2160, driver="nvidia", bus_id="PCI:1:0:0", video_port="DFP")
    with pytest.raises(StartError, match="DP-0"):
        write_x_files(tmp_path, spec)
