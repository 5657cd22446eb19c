"""The desktop's X server files and the host runtime's Xorg.

:func:`write_x_files` is the one place that writes the X cookie file and the xorg.conf
(rendered by xorg_conf.py) for every runtime: the host runtime starts Xorg with them here,
the apptainer runtime hands them to the image (bound read-only), whose entrypoint only
starts its X server with what it is given.

For the host runtime, `-displayfd` makes Xorg choose the first free display under its own lock
files and report it when it accepts connections, so two agents starting together never get the
same display.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcdesk.node.errors import StartError
from hpcdesk.node.procs import Child, spawn
from hpcdesk.node.xorg_conf import XorgSpec, render_xorg_conf

FAMILY_WILD = 0xFFFF


def write_xauthority(path: Path, cookie: bytes) -> None:
    """An Xauthority file with one FamilyWild MIT-MAGIC-COOKIE-1 entry (any display)."""

    def counted(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    entry = FAMILY_WILD.to_bytes(2, "big") + counted(b"") + counted(b"") + counted(
        b"MIT-MAGIC-COOKIE-1") + counted(cookie)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(entry)


@dataclass(frozen=True)
class XFiles:
    xauthority: Path   # a fresh random cookie, 0600
    conf: Path | None  # the xorg.conf, 0600; None for X servers that need none (Xvfb, Xvnc)


def write_x_files(workdir: Path, spec: XorgSpec | None) -> XFiles:
    """Write ``workdir/Xauthority`` and, for a spec, ``workdir/xorg.conf``."""
    xauthority = workdir / "Xauthority"
    write_xauthority(xauthority, secrets.token_bytes(16))
    if spec is None:
        return XFiles(xauthority, None)
    try:
        text = render_xorg_conf(spec)
    except ValueError as exc:  # a size or setting the X driver cannot do: the message says why
        raise StartError(str(exc)) from None
    conf = workdir / "xorg.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return XFiles(xauthority, conf)


@dataclass
class XServer:
    child: Child
    display: str  # ":N"


def start_xorg(xorg: str, files: XFiles, dpi: int, env: Mapping[str, str], log_path: Path,
               timeout: float) -> XServer:
    assert files.conf is not None, "Xorg needs the xorg.conf"
    conf, workdir = files.conf, files.conf.parent
    # No -configdir: an unprivileged Xorg ignores an absolute one. The generated config turns
    # off input hot-plugging, so the node's own xorg.conf.d snippets cannot grab devices.
    rfd, wfd = os.pipe()
    argv = [xorg, "-noreset", "-novtswitch", "-sharevts", "-nolisten", "tcp",
            "-config", str(conf),
            "-logfile", str(log_path.parent / "Xorg.log"), "-auth", str(files.xauthority),
            "-displayfd", str(wfd), "-dpi", str(dpi),
            "+extension", "GLX", "+extension", "RANDR", "+extension", "RENDER"]
    try:
        child = spawn("Xorg", argv, env, log_path, cwd=workdir, pass_fds=[wfd])
    finally:
        os.close(wfd)
    try:
        display = _read_display(rfd, child, timeout)
    finally:
        os.close(rfd)
    return XServer(child, f":{display}")


def _read_display(rfd: int, child: Child, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    buf = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([rfd], [], [], 0.2)
        if ready:
            chunk = os.read(rfd, 64)
            buf += chunk
            if b"\n" in buf:
                return int(buf.split(b"\n")[0])
            if not chunk:  # the server closed the pipe: it is exiting
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(5)
                break
        if not child.alive():
            break
    if child.alive():
        raise StartError(f"Xorg did not report a display within {timeout:.0f}s")
    raise StartError("the X server failed to start: " + child.describe_exit()
                     + _xorg_errors(child.log_path))


def _xorg_errors(log_path: Path | None) -> str:
    """The (EE) lines of Xorg's own log, which name the real cause."""
    if log_path is None:
        return ""
    xlog = log_path.parent / "Xorg.log"
    try:
        lines = [ln for ln in xlog.read_text(errors="replace").splitlines() if "(EE)" in ln]
    except OSError:
        return ""
    return ("\nXorg errors:\n" + "\n".join(lines[-8:])) if lines else ""
