"""Local ports forwarded through the SSH connection (sshtunnel's forward server).

The listening socket outlives the SSH connection: while the tunnel reconnects, a new
browser connection waits for the new link instead of being refused, and the byte pump
(sshtunnel's) ends with the channel when the old link dies, so the browser reconnects.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable

import paramiko
import sshtunnel

from hpcdesk.errors import UsageError

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 20.0
WAIT_FOR_LINK = 120.0  # how long a new local connection waits for a reconnect


class PortInUse(UsageError):
    pass


TransportSource = Callable[[float], "paramiko.Transport | None"]


class _Handler(sshtunnel._ForwardHandler):  # type: ignore[misc]  # sshtunnel has no types
    """One local connection: a direct-tcpip channel to the target, then sshtunnel's pump."""

    def handle(self) -> None:
        server: _Server = self.server
        self.remote_address = server.target
        self.logger = log
        self.info = f"{self.client_address} -> {server.target}"
        transport = server.source(WAIT_FOR_LINK)
        if transport is None:
            log.info("%s: no SSH connection, closing", self.info)
            self.request.close()
            return
        try:
            chan = transport.open_channel("direct-tcpip", server.target,
                                          self.request.getpeername()[:2], timeout=OPEN_TIMEOUT)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            log.info("%s: channel refused: %s", self.info, exc)
            self.request.close()
            server.on_refused()  # the desktop may have ended: let the tunnel look
            return
        try:
            self._redirect(chan)
        except OSError:
            log.debug("%s: connection reset", self.info)
        finally:
            chan.close()
            self.request.close()


class _Server(sshtunnel._ThreadingForwardServer):  # type: ignore[misc]
    daemon_threads = True
    block_on_close = False
    # Windows lets SO_REUSEADDR take over a port another program listens on.
    allow_reuse_address = os.name != "nt"
    target: tuple[str, int]
    source: TransportSource
    on_refused: Callable[[], None]


class Forward:
    """127.0.0.1:local_port (0: a free one) -> target as seen from the login node."""

    def __init__(self, local_port: int, target: tuple[str, int], source: TransportSource,
                 what: str, on_refused: Callable[[], None] = lambda: None,
                 bind: str = "127.0.0.1") -> None:
        try:
            self.server = _Server((bind, local_port), _Handler, logger=log)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                raise PortInUse(
                    f"local port {local_port} ({what}) is already in use on this computer"
                    if exc.errno == errno.EADDRINUSE else
                    f"local port {local_port} ({what}) needs privileges this user lacks",
                    hint="choose another with --local-port, or leave it out for a free one"
                    if what == "web" else "stop what uses it, then try again") from None
            raise
        self.server.target = target
        self.server.source = source
        self.server.on_refused = on_refused
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def retarget(self, target: tuple[str, int]) -> None:
        self.server.target = target

    def start(self) -> None:
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.2,),
                                       name=f"forward-{self.port}", daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join(5)
        self.server.server_close()
