"""A real Xorg (dummy driver) from the generated config reports exactly the requested size.

Runs Xorg as an unprivileged user (nobody when the tests run as root), on a display Xorg picks
itself (-displayfd), with its log in a temporary directory; only that Xorg is stopped.
Needs Xorg, the dummy driver, xdpyinfo and xrandr (Debian: xserver-xorg-core
xserver-xorg-video-dummy x11-utils x11-xserver-utils); see tests/tooling.py.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from tooling import require

from hpcdesk.node.xorg_conf import XorgSpec, render_xorg_conf

XORG = Path("/usr/lib/xorg/Xorg")
DUMMY = Path("/usr/lib/xorg/modules/drivers/dummy_drv.so")
XDPYINFO = shutil.which("xdpyinfo")
XRANDR = shutil.which("xrandr")
NOBODY = 65534



@pytest.fixture(autouse=True)
def _x_tools() -> None:
    require(str(XORG), package="xserver-xorg-core")
    require(str(DUMMY), package="xserver-xorg-video-dummy")
    require("xdpyinfo", package="x11-utils")
    require("xrandr", package="x11-xserver-utils")


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory that the unprivileged X server can read and write."""
    path = Path(tempfile.mkdtemp(prefix="hpcdesk-xorg-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _socket_dir() -> None:
    # As root, make sure /tmp/.X11-unix is the usual root-owned sticky directory, so that the
    # unprivileged server does not create it with itself as owner.
    sockets = Path("/tmp/.X11-unix")
    if os.geteuid() == 0 and not sockets.exists():
        sockets.mkdir(mode=0o1777)
        sockets.chmod(0o1777)


def _read_display(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    data = b""
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 64)
            data += chunk
            if b"\n" in data or not chunk:
                break
    if not data.strip():
        raise AssertionError(f"Xorg reported no display (exit code {proc.poll()})")
    return int(data.split()[0])


def _popen_xorg(argv: list[str], write_fd: int, stderr: IO[bytes], workdir: Path,
                as_nobody: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        pass_fds=[write_fd],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,  # the child keeps its own copy; ours is closed by the caller
        cwd=workdir,
        user=NOBODY if as_nobody else None,
        group=NOBODY if as_nobody else None,
        extra_groups=[] if as_nobody else None,
    )


def start_xorg(conf: Path, workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    # No -configdir: an unprivileged Xorg ignores an absolute one (its log says "Unable to
    # locate/open config directory" and it reads the system directory anyway).
    read_fd, write_fd = os.pipe()
    argv = [str(XORG), "-noreset", "-nolisten", "tcp", "-config", str(conf),
            "-logfile", str(workdir / "Xorg.log"),
            "-displayfd", str(write_fd)]
    as_nobody = os.geteuid() == 0
    with (workdir / "Xorg.stderr").open("wb") as stderr:
        proc = _popen_xorg(argv, write_fd, stderr, workdir, as_nobody)
    os.close(write_fd)
    try:
        return proc, _read_display(read_fd, proc, timeout=30)
    except BaseException:
        stop(proc)
        raise
    finally:
        os.close(read_fd)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the Xorg that this test started (by its own handle, never by name)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.parametrize(("width", "height", "depth"), [
    (1280, 720, 24), (1920, 1080, 24), (2560, 1440, 24), (1366, 768, 24), (3840, 2160, 24),
    (1920, 1080, 30),
])
def test_dummy_xorg_has_exactly_the_requested_size(
    shared_tmp: Path, width: int, height: int, depth: int
) -> None:
    _socket_dir()
    conf = shared_tmp / "xorg.conf"
    conf.write_text(render_xorg_conf(XorgSpec(width, height, depth=depth)))
    conf.chmod(0o644)
    proc, display = start_xorg(conf, shared_tmp)
    try:
        info = subprocess.run([str(XDPYINFO), "-display", f":{display}"], capture_output=True,
                              text=True, timeout=30, check=True).stdout
        dims = re.search(r"dimensions:\s+(\d+)x(\d+) pixels", info)
        assert dims is not None, info
        assert (int(dims[1]), int(dims[2])) == (width, height)
        assert re.search(rf"depth of root window:\s+{depth} planes", info)
        assert re.search(r"resolution:\s+96x96 dots per inch", info)
        randr = subprocess.run([str(XRANDR), "-display", f":{display}"], capture_output=True,
                               text=True, timeout=30, check=False).stdout
        assert f"current {width} x {height}" in randr, randr
    except AssertionError:
        log = (shared_tmp / "Xorg.log").read_text(errors="replace")
        print("\n".join(line for line in log.splitlines() if "(EE)" in line or "(WW)" in line))
        raise
    finally:
        stop(proc)
