"""The node agent's own exceptions: why the desktop could not start, or why it stops.

``StartError`` ends the agent with phase ``failed`` and its message as the reason shown to the
user; ``Stop`` (raised by the signal handler) ends it with phase ``stopped``.
"""

from __future__ import annotations


class StartError(RuntimeError):
    """The desktop could not start (or stopped working); the message names the cause."""


class Stop(Exception):
    """The agent was told to stop (scancel, the time limit, a signal); `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PortTaken(StartError):
    """Another process (named by its user) listens on the port the web UI was given: nothing
    was sent to it; the agent tries another port."""

    def __init__(self, port: int, holders: str) -> None:
        super().__init__(f"port {port} on this node is held by {holders}, not by this desktop; "
                         "no credential was sent to it")
        self.port = port
        self.holders = holders
