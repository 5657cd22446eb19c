"""X display numbers for servers that are told their display (container images).

What desktops on one node really share is the abstract socket namespace of the network
namespace: an X server listens on @/tmp/.X11-unix/XN there, and a container with a private
/tmp shares nothing else. A display N is therefore free when no abstract (or host
filesystem) X socket N is listed in /proc/net/unix and the agent can take the claim
`display-N` (locks.py), which it holds for the whole session so that two agents starting
at the same moment never pick the same N.

Files in the host's /tmp do not decide: lock files /tmp/.XN-lock outlive their owner's job
and cost nothing to create (980 of them once blocked every image desktop of a node), and
the containers never see them. They are only logged, with their owner. The number is drawn
at random from a wide range, so that blocking every display costs a neighbour as many
sockets held as real X servers would need. (The host runtime lets Xorg choose with
-displayfd instead.)
"""

from __future__ import annotations

import logging
import random
import socket
from pathlib import Path

from hpcdesk.node.locks import SCOPE, describe_owner, try_claim

log = logging.getLogger(__name__)

FIRST = 20   # leave low numbers to console servers and ssh X forwarding (10+)
LAST = 9999  # VNC servers add the display to 5900; stay well inside the port range
PREFIXES = ("@/tmp/.X11-unix/X", "/tmp/.X11-unix/X")


def x_sockets(proc_net_unix: Path = Path("/proc/net/unix")) -> set[int]:
    """Display numbers with an X socket (abstract or filesystem) in this namespace."""
    taken: set[int] = set()
    try:
        text = proc_net_unix.read_text()
    except OSError:
        return taken
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        path = fields[-1]
        for prefix in PREFIXES:
            if path.startswith(prefix) and path[len(prefix):].isdigit():
                taken.add(int(path[len(prefix):]))
    return taken


def in_use(n: int, tmp: Path = Path("/tmp")) -> bool:
    """Display N is taken for an X server that shares the host's /tmp (its lock file or
    socket exists, or its abstract socket is bound)."""
    return (n in x_sockets() or (tmp / f".X{n}-lock").exists()
            or (tmp / ".X11-unix" / f"X{n}").exists())


class DisplayLease:
    def __init__(self, tmp: Path = Path("/tmp"), scope: str = SCOPE,
                 first: int = FIRST, last: int = LAST) -> None:
        self.scope = scope
        self.tmp = tmp
        self.span = (first, last)
        self.claim: socket.socket | None = None
        self.number: int | None = None

    def acquire(self) -> int:
        sockets = x_sockets()
        free = [n for n in range(self.span[0], self.span[1] + 1) if n not in sockets]
        random.shuffle(free)
        contested = 0
        for n in free:
            claim = try_claim(f"display-{n}", self.scope)
            if claim is None:
                contested += 1  # another agent's (or a squatter's) name: try the next
                continue
            if n in x_sockets():  # an X server started between the scan and the claim
                claim.close()
                continue
            self._log_foreign_lock(n)
            if contested:
                log.info("display claims: %d numbers were claimed by other processes",
                         contested)
            self.claim, self.number = claim, n
            return n
        raise RuntimeError(f"no free X display between :{self.span[0]} and :{self.span[1]} "
                           f"on this node ({len(sockets)} X sockets, {contested} claims held "
                           "by other processes)")

    def _log_foreign_lock(self, n: int) -> None:
        lock = self.tmp / f".X{n}-lock"
        owner = describe_owner(lock)
        if owner:
            log.info("display :%d: ignoring %s of %s (the container has its own /tmp)",
                     n, lock, owner)

    def release(self) -> None:
        if self.claim is not None:
            self.claim.close()
            self.claim = self.number = None
