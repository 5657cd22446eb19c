"""TCP ports on a shared node: the kernel proposes a free port; nothing announces it.

A port claim that others can see (an abstract socket name in /proc/net/unix, a lock file)
tells a neighbour which port is about to be used while the web UI is still starting, and a
neighbour who binds it first receives the first health probe. So a lease only picks a port
that nothing listens on (on every address the desktop needs) and remembers it, announcing it
nowhere. The claim is the real listening socket of the web UI: two desktops that happen to
pick the same port at the same moment (rare: the pick is random) are told apart by the
readiness proof (health.who_listens), and the one that lost tries another port (agent.py).
A neighbour can block a port only by holding it, which costs exactly what the port is worth.
"""

from __future__ import annotations

import errno
import random
import socket
from collections.abc import Sequence


class PortLease:
    def __init__(self, bind_addr: str, port_min: int = 0, port_max: int = 0,
                 also: Sequence[str] = ()) -> None:
        self.bind_addr = bind_addr
        self.also = tuple(also)  # further addresses the port must be free on (e.g. loopback)
        self.range = (port_min, port_max) if port_min and port_max else None
        self.held: set[int] = set()   # ports handed out by this lease
        self.refused: set[int] = set()  # ports found taken by someone else: never again

    def _probe(self, port: int) -> int | None:
        got = _bind(self.bind_addr, port)
        if got is not None and all(_bind(addr, got) == got for addr in self.also):
            return got
        return None

    def acquire(self, attempts: int = 200) -> int:
        for _ in range(attempts):
            candidate = random.randint(*self.range) if self.range else 0  # noqa: S311
            port = self._probe(candidate)
            if port is None or port in self.held or port in self.refused:
                continue
            self.held.add(port)
            return port
        raise RuntimeError(f"no free port on {self.bind_addr} after {attempts} attempts")

    def refuse(self, port: int) -> None:
        """`port` turned out to be someone else's: release it and never pick it again."""
        self.release(port)
        self.refused.add(port)

    def release(self, port: int | None = None) -> None:
        if port is None:
            self.held.clear()
        else:
            self.held.discard(port)


def _bind(addr: str, port: int) -> int | None:
    """The port a test bind on addr got (the kernel's choice for 0), or None if taken."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((addr, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return None
            raise
        return int(s.getsockname()[1])
