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
import logging
import os
import secrets
import select
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcdesk.node.errors import StartError
from hpcdesk.node.locks import describe_owner
from hpcdesk.node.procs import Child, spawn
from hpcdesk.node.xorg_conf import XorgSpec, render_xorg_conf

log = logging.getLogger(__name__)
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


X11_UNIX = Path("/tmp/.X11-unix")
SOCKET_DIRS = (X11_UNIX, Path("/tmp/.ICE-unix"))  # node-wide, shared by every user of /tmp
XORG_LOG_LIMIT = 16 << 20  # bytes: a failing Xorg once wrote 50 MB of logs per start


def _dir_stat(path: Path) -> os.stat_result | str | None:
    """`path`'s own status when it is a directory; why not when it cannot be one; None when
    it is missing."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path} cannot be checked: {exc.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    return st


def socket_dir_problem(path: Path, uid: int | None = None) -> str | None:
    """Why the node-wide socket directory `path` is unsafe or unusable for this user, or None
    (missing, or root's or this user's with the sticky bit: X servers make it as needed)."""
    me = os.getuid() if uid is None else uid
    st = _dir_stat(path)
    if not isinstance(st, os.stat_result):
        return st
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in (0, me):
        return f"{path} belongs to {describe_owner(path)} (mode {mode:04o})"
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return f"{path} is writable by others without the sticky bit (mode {mode:04o})"
    if st.st_uid != me and mode & 0o1777 != 0o1777:
        return f"{path} has mode {mode:04o}, not 1777: other users cannot create their sockets"
    return None


def socket_dir_unusable(path: Path) -> str | None:
    """Why an X server of this user cannot keep its socket in `path`, or None (missing:
    Xorg makes it; or a directory this user may create entries in, that nobody else can
    empty: sticky, like /tmp). A sticky 1777 directory of another user still works (they
    cannot remove our socket), so the filesystem socket, which some clients need, stays."""
    st = _dir_stat(path)
    if not isinstance(st, os.stat_result):
        return st
    mode = stat.S_IMODE(st.st_mode)
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} belongs to {describe_owner(path)} (mode {mode:04o}), not writable here"
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return f"{path} is writable by others without the sticky bit (mode {mode:04o})"
    return None


def start_xorg(xorg: str, files: XFiles, dpi: int, env: Mapping[str, str], log_path: Path,
               timeout: float) -> XServer:
    assert files.conf is not None, "Xorg needs the xorg.conf"
    conf, workdir = files.conf, files.conf.parent
    # The filesystem socket lives in the node-wide /tmp/.X11-unix. When another user made
    # that directory unusable (theirs, mode 0755), Xorg would try every display and fail: it
    # then listens on its abstract socket @/tmp/.X11-unix/XN only (per network namespace),
    # which X clients (libxcb) try first, and creates nothing in the foreign directory.
    problem = socket_dir_unusable(X11_UNIX)
    unix = ["-nolisten", "unix"] if problem else []
    if problem:
        log.warning("%s: the X server listens on its abstract socket only", problem)
    # No -configdir: an unprivileged Xorg ignores an absolute one. The generated config turns
    # off input hot-plugging, so the node's own xorg.conf.d snippets cannot grab devices.
    rfd, wfd = os.pipe()
    argv = [xorg, "-noreset", "-novtswitch", "-sharevts", "-nolisten", "tcp", *unix,
            "-config", str(conf),
            "-logfile", str(log_path.parent / "Xorg.log"), "-auth", str(files.xauthority),
            "-displayfd", str(wfd), "-dpi", str(dpi),
            "+extension", "GLX", "+extension", "RANDR", "+extension", "RENDER"]
    try:
        child = spawn("Xorg", argv, env, log_path, cwd=workdir, pass_fds=[wfd],
                      max_file_bytes=XORG_LOG_LIMIT)
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
