"""Race-free X display numbers for servers that are told their display (container images).

A display N is free when no lock file /tmp/.XN-lock and no socket /tmp/.X11-unix/XN exists on
the node, and no abstract socket @/tmp/.X11-unix/XN is bound in this network namespace
(containers with a private /tmp still share those). The agent then holds the claim
`display-N` (locks.py: an abstract Unix socket, no file) for the whole session, so two agents
starting at the same moment never pick the same N. (The host runtime lets Xorg choose with
-displayfd instead.)
"""

from __future__ import annotations

import socket
from pathlib import Path

from hpcdesk.node.locks import SCOPE, try_claim

FIRST = 20   # leave low numbers to console servers and ssh X forwarding (10+)
LAST = 999


def _abstract_x_sockets(proc_net_unix: Path = Path("/proc/net/unix")) -> set[int]:
    taken: set[int] = set()
    try:
        lines = proc_net_unix.read_text().splitlines()[1:]
    except OSError:
        return taken
    for line in lines:
        path = line.split()[-1] if len(line.split()) >= 8 else ""
        for prefix in ("@/tmp/.X11-unix/X", "/tmp/.X11-unix/X"):
            if path.startswith(prefix) and path[len(prefix):].isdigit():
                taken.add(int(path[len(prefix):]))
    return taken


def in_use(n: int, tmp: Path = Path("/tmp"), sockets: set[int] | None = None) -> bool:
    if sockets is None:
        sockets = _abstract_x_sockets()
    return (n in sockets or (tmp / f".X{n}-lock").exists()
            or (tmp / ".X11-unix" / f"X{n}").exists())


class DisplayLease:
    def __init__(self, tmp: Path = Path("/tmp"), scope: str = SCOPE) -> None:
        self.scope = scope
        self.tmp = tmp
        self.claim: socket.socket | None = None
        self.number: int | None = None

    def acquire(self) -> int:
        sockets = _abstract_x_sockets()
        for n in range(FIRST, LAST + 1):
            if in_use(n, self.tmp, sockets):
                continue
            claim = try_claim(f"display-{n}", self.scope)
            if claim is None:
                continue
            if in_use(n, self.tmp):  # taken between the scan and the claim
                claim.close()
                continue
            self.claim, self.number = claim, n
            return n
        raise RuntimeError(f"no free X display between :{FIRST} and :{LAST} on this node")

    def release(self) -> None:
        if self.claim is not None:
            self.claim.close()
            self.claim = self.number = None
