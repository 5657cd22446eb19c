"""The node's reachable address: its host name, a named interface's IPv4, or a fixed one."""

from __future__ import annotations

import fcntl
import socket
import struct

SIOCGIFADDR = 0x8915
# Bind addresses that mean "every address of the node": a local probe of a service bound to
# one goes to loopback, and a certificate or a peer check never names them.
WILDCARDS = ("0.0.0.0", "::")  # noqa: S104


def interface_ipv4(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError as exc:
            raise RuntimeError(f"interface {name!r} has no IPv4 address on this node "
                               f"({exc.strerror}); check network.interface") from None
    return socket.inet_ntoa(packed[20:24])


def reachable(mode: str, interface: str | None, fixed: str | None) -> tuple[str, str]:
    """(host to publish in the URL, address to bind the web server to)."""
    if mode == "interface" and interface:
        ip = interface_ipv4(interface)
        return ip, ip
    if mode == "fixed" and fixed:
        return fixed, fixed
    host = socket.getfqdn()
    try:
        ip = socket.gethostbyname(host)
    except OSError:
        return host, WILDCARDS[0]
    # Debian maps the host name to 127.0.1.1: then listen everywhere, publish the name.
    return host, (WILDCARDS[0] if ip.startswith("127.") else ip)
