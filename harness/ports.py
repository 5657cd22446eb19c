"""A free TCP port for a server a test or benchmark starts."""

from __future__ import annotations

import socket


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on at `ip` now (the kernel's pick; free it was, not will be)."""
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])
