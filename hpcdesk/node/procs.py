"""Children the agent starts, each in its own process group, and how they are stopped.

The agent ends only what it started: a child's process group, then any remaining descendant
of the agent itself (found through /proc parent links: :func:`descendants`, the one process-tree
walk; a container's processes are the agent's descendants too, so the images' entrypoints
stop only what they started themselves). It never kills by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcdesk.node.errors import StartError
from hpcdesk.session import tail_lines

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path | None

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
          cwd: Path | None = None, pass_fds: Sequence[int] = ()) -> Child:
    log.info("starting %s: %s", name, " ".join(argv))
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True,
                                pass_fds=tuple(pass_fds))
    except OSError as exc:
        raise StartError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
    finally:
        if log_path and not isinstance(out, int):
            out.close()
    return Child(name, proc, log_path)


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


def stop_all(children: Sequence[Child], grace: float = 5.0) -> None:
    """SIGTERM each child's group (newest first), wait, then SIGKILL what is left."""
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
    stragglers = descendants(os.getpid())
    for pid in stragglers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    if stragglers:
        log.info("killed %d leftover descendant process(es): %s", len(stragglers), stragglers)
