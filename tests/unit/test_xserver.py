"""The X files every runtime and image gets: one cookie writer, one xorg.conf writer."""

from __future__ import annotations

import os
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


def test_x11_socket_dir_rules(tmp_path: Path) -> None:
    """Issue 19 row 2: only a directory this user cannot use (or that others can empty)
    makes Xorg drop its filesystem socket; doctor --node names a foreign owner."""
    from hpcdesk.node.xserver import socket_dir_problem, socket_dir_unusable

    d = tmp_path / ".X11-unix"
    assert socket_dir_unusable(d) is None and socket_dir_problem(d) is None  # missing: fine
    d.mkdir()
    d.chmod(0o1777)
    assert socket_dir_unusable(d) is None and socket_dir_problem(d) is None
    d.chmod(0o777)
    assert "sticky" in (socket_dir_unusable(d) or "") and socket_dir_problem(d)
    d.chmod(0o1777)
    if os.getuid() == 0:  # as root (the test runner), give it to another user
        os.chown(d, 65534, -1)
        assert "belongs to" in (socket_dir_problem(d) or "")
        d.chmod(0o755)
        assert socket_dir_unusable(d) is None  # root may write anywhere; a user may not
    else:
        assert "belongs to" in (socket_dir_problem(d, uid=os.getuid() + 4242) or "")
