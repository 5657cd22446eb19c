"""Race-free TCP ports on a node: the kernel proposes a free port, a node-wide lock claims it.

Two agents starting at the same moment may be offered the same port number by the kernel
between one agent's probe and its server's bind. Each agent therefore holds an exclusive
flock on `<lock_dir>/port-<N>.lock` for the whole session; a clash means "try another".
"""

from __future__ import annotations

import errno
import os
import random
import socket
from collections.abc import Sequence
from pathlib import Path

from hpcdesk.node.locks import try_claim


class PortLease:
    def __init__(self, lock_dir: Path, bind_addr: str, port_min: int = 0, port_max: int = 0,
                 also: Sequence[str] = ()):
        self.lock_dir = lock_dir
        self.bind_addr = bind_addr
        self.also = tuple(also)  # further addresses the port must be free on (e.g. loopback)
        self.range = (port_min, port_max) if port_min and port_max else None
        self.held: dict[int, int] = {}  # port -> lock fd

    def _probe(self, port: int) -> int | None:
        got = _bind(self.bind_addr, port)
        if got is not None and all(_bind(addr, got) == got for addr in self.also):
            return got
        return None

    def _claim(self, port: int) -> bool:
        fd = try_claim(self.lock_dir, f"port-{port}")
        if fd is None:
            return False
        self.held[port] = fd
        return True

    def acquire(self, attempts: int = 200) -> int:
        for _ in range(attempts):
            candidate = random.randint(*self.range) if self.range else 0  # noqa: S311
            port = self._probe(candidate)
            if port is None or port in self.held:
                continue
            if self._claim(port):
                # Re-probe under the lock: a server may have bound it in between.
                if self._probe(port) == port:
                    return port
                self.release(port)
        raise RuntimeError(f"no free port on {self.bind_addr} after {attempts} attempts")

    def release(self, port: int | None = None) -> None:
        for p in [port] if port is not None else list(self.held):
            fd = self.held.pop(p, None)
            if fd is not None:
                os.close(fd)


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
