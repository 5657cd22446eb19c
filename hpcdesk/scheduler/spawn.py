"""Run one Slurm command and capture what it prints, without the subprocess module.

`hpcdesk list` and `status` run one `squeue` each; the subprocess module (with threading,
selectors and locale) would be a tenth of their start (issue 23). This is the part
of `subprocess.run` the Slurm backend uses: an argument list (no shell), an environment,
stdin from /dev/null, stdout and stderr read as text, and a time limit after which the
command is killed. posix_spawn is what subprocess itself uses where it can.
"""

# No `from __future__ import annotations` here: with it, typing.NamedTuple compiles each
# field's annotation string at every start of `hpcdesk list` (issue 23).
import os
import select
import time
from signal import SIGKILL, SIGPIPE, SIGXFSZ
from typing import NamedTuple

_READ = select.POLLIN | select.POLLHUP | select.POLLERR
# Python ignores these two; the command gets their default actions back, as with subprocess.
_RESTORE = (SIGPIPE, SIGXFSZ)


class Ran(NamedTuple):
    """What a command did: its exit code (124 if it ran out of time, -N if signal N ended
    it) and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def run(argv: list[str], env: dict[str, str], timeout: float) -> Ran:
    """Run argv (found on env's PATH) to its end or for `timeout` seconds, whichever is
    first; FileNotFoundError if there is no such command. Interrupted (Ctrl-C), the command
    is killed and reaped before the interrupt goes on."""
    out_r, out_w = os.pipe()  # both ends close-on-exec; the child gets them as fd 1 and 2
    err_r, err_w = os.pipe()
    try:
        pid = os.posix_spawn(_which(argv[0], env), argv, env, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ], setsigdef=_RESTORE)
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}
    timed_out = False
    try:
        timed_out = not _read_until_closed(chunks, time.monotonic() + timeout)
        if timed_out:
            os.kill(pid, SIGKILL)
        status = os.waitpid(pid, 0)[1]
    except BaseException:
        _kill_and_reap(pid)
        raise
    finally:
        for fd in chunks:
            os.close(fd)
    text = [b"".join(chunks[fd]).decode(errors="replace") for fd in (out_r, err_r)]
    if timed_out:
        return Ran(124, text[0], text[1] or f"{argv[0]} timed out after {timeout:.0f}s")
    return Ran(os.waitstatus_to_exitcode(status), text[0], text[1])


def _which(name: str, env: dict[str, str]) -> str:
    """The command's path on env's PATH (os.get_exec_path, as subprocess searches; not
    shutil.which, whose import with its compressors is ~2 ms of `hpcdesk list`)."""
    if "/" in name:
        return name
    for d in os.get_exec_path(env):
        path = os.path.join(d, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise FileNotFoundError(name)


def _read_until_closed(chunks: dict[int, list[bytes]], deadline: float) -> bool:
    """Read every fd in `chunks` until each is closed (True) or the deadline passes."""
    poller = select.poll()
    for fd in chunks:
        poller.register(fd, _READ)
    open_fds = len(chunks)
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for fd, _ in poller.poll(left * 1000):
            data = os.read(fd, 65536)
            if data:
                chunks[fd].append(data)
            else:
                poller.unregister(fd)
                open_fds -= 1
    return True


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
