"""Children the agent starts, each in its own process group, and how they are stopped.

The agent ends only what it started: a child's process group, then any remaining descendant
of the agent itself (found through /proc parent links: :func:`descendants`, the one process-tree
walk; a container's processes are the agent's descendants too, so the images' entrypoints
stop only what they started themselves). It never kills by name.

The agent is a child subreaper (:func:`become_subreaper`): a daemon that double-forks away
from its parent (dbus-launch, session helpers, user apps) is reparented to the agent instead
of init, so it stays a descendant that the sweep finds; :func:`reap_orphans` collects those
that exit on their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import resource
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcdesk.files import tail_lines
from hpcdesk.node.errors import StartError

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None
    # Essential children (X server, desktop session, web UI) end the desktop when they exit;
    # the exit of any other (autostart programs: launchers and scripts exit all the time) is
    # only logged.
    essential: bool = True
    exit_logged: bool = False
    # How to start it again, for a child that may be restarted after a crash (the web UI:
    # same port, same password); None for one whose loss ends the desktop (the X server).
    again: Callable[[], Child] | None = None
    restarts: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe_exit(self) -> str:
        rc = self.proc.poll()
        if rc is None:
            return f"{self.name} is running"
        how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
        tail = tail_lines(self.log_path, 8) if self.log_path else ""
        return f"{self.name} exited ({how})" + (f"; its log ends:\n{tail}" if tail else "")


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None,
          cwd: Path | None = None, pass_fds: Sequence[int] = (), essential: bool = True,
          restartable: bool = False, max_file_bytes: int = 0) -> Child:
    """Start a child in its own session; `max_file_bytes` (RLIMIT_FSIZE) bounds every file
    it writes, its logs included."""
    log.info("starting %s: %s", name, " ".join(argv))
    preexec = _die_with_parent
    if max_file_bytes:
        def preexec() -> None:
            _die_with_parent()
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                pass_fds=tuple(pass_fds), preexec_fn=preexec)
    except OSError as exc:
        raise StartError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
    finally:
        if log_path and not isinstance(out, int):
            out.close()
    child = Child(name, proc, log_path, essential=essential)
    if restartable:
        child.again = lambda: spawn(name, argv, env, log_path, cwd, pass_fds, essential,
                                    restartable=True)
    return child


def first_essential_exit(children: Sequence[Child]) -> Child | None:
    """The first essential child that has exited; other exits are logged once and ignored."""
    for child in children:
        if child.alive():
            continue
        if child.essential:
            return child
        if not child.exit_logged:
            child.exit_logged = True
            log.info("%s (not essential to the desktop)", child.describe_exit())
    return None


PR_SET_PDEATHSIG = 1         # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36


def _die_with_parent() -> None:
    """In a new child, before exec: SIGKILL it when the agent dies, even by SIGKILL (its own
    process group would otherwise outlive the job: Slurm's linuxproc tracking loses
    processes whose parent is gone)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def become_subreaper() -> bool:
    """Make orphaned descendants of this process its children (Linux >= 3.4)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        ok = False
    if not ok:
        log.warning("cannot become a child subreaper: daemons that double-fork may escape "
                    "the cleanup")
    return ok


def _direct_children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for tid in tasks:
        with contextlib.suppress(OSError, ValueError):
            listed = Path(f"/proc/{pid}/task/{tid}/children").read_text()
            kids.extend(int(k) for k in listed.split())
    return kids


def reap_orphans(children: Sequence[Child]) -> list[int]:
    """Collect exited processes reparented to this subreaper (not the ones it started, whose
    status belongs to their Popen); returns the pids reaped."""
    own = {c.pid for c in children}
    reaped = []
    for pid in _direct_children(os.getpid()):
        if pid in own:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
    return reaped


def descendants(root: int) -> list[int]:
    """PIDs whose parent chain leads to `root` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
    found: list[int] = []
    frontier = [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found.extend(kids)
        frontier.extend(kids)
    return found


def stop_all(children: Sequence[Child], grace: float = 5.0, sweep: bool = True) -> None:
    """SIGTERM each child's group (newest first), wait, then SIGKILL what is left; with
    `sweep`, every other descendant of the agent too (the end of the desktop)."""
    for child in reversed(children):
        if child.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(max(0.0, deadline - time.monotonic()))
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(2)
    # Grandchildren that left their group (setsid daemons) but are still ours.
    # Grandchildren that left their group (setsid daemons), and double-forked daemons that
    # were reparented to this subreaper: still ours.
    stragglers = descendants(os.getpid()) if sweep else []
    for pid in stragglers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if stragglers:
        log.info("killed %d leftover descendant process(es): %s", len(stragglers), stragglers)
        deadline = time.monotonic() + 2.0
        while set(stragglers) & set(_direct_children(os.getpid())) and (
                time.monotonic() < deadline):
            reap_orphans(children)
            time.sleep(0.05)
