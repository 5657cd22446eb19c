"""One SSH connection to the login node, through every hop on the way.

The first hop is reached by TCP or by its ProxyCommand; every later hop through a
`direct-tcpip` channel of the hop before it (ProxyJump, applied by hand since paramiko does
not). Each hop's host key is checked and each hop authenticates on its own.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paramiko

from hpcdesk.errors import Unreachable
from hpcdesk.laptop.auth import Authenticator
from hpcdesk.laptop.hostkeys import KnownHosts
from hpcdesk.laptop.target import Hop

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 20.0
AUTH_TIMEOUT = 300.0  # a person types a one-time code meanwhile (sshd allows 120 s itself)
KEEPALIVE = 10      # seconds between keepalives (they keep NAT and firewall state alive)
PROBE_TIMEOUT = 15.0  # a login node that does not answer a request this long is gone


@dataclass
class Link:
    hops: Sequence[Hop]
    transports: list[paramiko.Transport]

    @property
    def transport(self) -> paramiko.Transport:
        return self.transports[-1]

    def alive(self) -> bool:
        return all(t.is_active() for t in self.transports)

    def answers(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """Whether the login node answers a request within `timeout`. A path that died
        silently (a laptop that slept, a new Wi-Fi, a dropped VPN) fails this long before
        TCP would notice."""
        done = threading.Event()

        def ask() -> None:
            with contextlib.suppress(Exception):  # any failure is "no answer"
                self.transport.global_request("keepalive@openssh.com", wait=True)
            done.set()

        threading.Thread(target=ask, name="ssh-probe", daemon=True).start()
        return done.wait(timeout) and self.alive()

    def close(self) -> None:
        for t in reversed(self.transports):
            try:
                t.close()
            except (OSError, EOFError, paramiko.SSHException):
                log.debug("closing %s failed", t, exc_info=True)


def _first_sock(hop: Hop, timeout: float) -> Any:
    if hop.proxy_command:
        try:
            return paramiko.ProxyCommand(hop.proxy_command)
        except (OSError, paramiko.SSHException) as exc:
            raise Unreachable(f"ProxyCommand for {hop.name} failed to start: {exc}",
                              hint="check ProxyCommand in your ssh config") from None
    try:
        return socket.create_connection((hop.hostname, hop.port), timeout=timeout)
    except socket.gaierror as exc:
        raise Unreachable(f"cannot find the address of {hop.hostname}: {exc.strerror}",
                          hint="check the host name (or HostName in ~/.ssh/config)") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__.replace("Error", " error")
        if isinstance(exc, TimeoutError):
            reason = f"no answer within {timeout:.0f}s"
        raise Unreachable(f"cannot reach {hop.describe()}: {reason}",
                          hint="check your network (VPN?), the host name and the port; "
                               "`ssh -v` shows the same") from None


def _next_sock(previous: Link, hop: Hop, timeout: float) -> Any:
    via = previous.hops[len(previous.transports) - 1]
    try:
        return previous.transport.open_channel(
            "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        reason = getattr(exc, "text", None) or str(exc) or type(exc).__name__
        raise Unreachable(f"the jump host {via.describe()} cannot reach {hop.describe()}: "
                          f"{reason}", hint="check ProxyJump / --jump and the login host's "
                                            "name as the jump host sees it") from None


def _handshake(sock: Any, hop: Hop, auth: Authenticator, timeout: float) -> paramiko.Transport:
    transport = paramiko.Transport(sock)
    transport.auth_timeout = AUTH_TIMEOUT
    try:
        known = KnownHosts.load(hop)
        types = known.key_types()
        if types:
            try:
                transport.get_security_options().key_types = types
            except ValueError:
                log.info("known key types %s not all supported; offering paramiko's", types)
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise Unreachable(f"no SSH connection with {hop.describe()}: {exc or 'closed'}",
                              hint="is an SSH server listening there?") from None
        known.verify(transport.get_remote_server_key())
        auth.login(transport, hop)
        transport.set_keepalive(KEEPALIVE)
        return transport
    except BaseException:
        transport.close()
        raise


def connect(hops: Sequence[Hop], auth: Authenticator, timeout: float = CONNECT_TIMEOUT) -> Link:
    """Log in through every hop; the returned link's transport is the login node's."""
    link = Link(hops, [])
    try:
        for i, hop in enumerate(hops):
            sock = _first_sock(hop, timeout) if i == 0 else _next_sock(link, hop, timeout)
            log.info("connecting to %s", hop.describe())
            link.transports.append(_handshake(sock, hop, auth, timeout))
    except BaseException:
        link.close()
        raise
    return link
