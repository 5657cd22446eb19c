"""A real TURN allocation against the site's TURN server, for `hpcdesk doctor`.

A minimal STUN/TURN client (RFC 5389/5766): Allocate without credentials (the server answers
401 with its realm and nonce), Allocate again with the long-term credential mechanism
(MESSAGE-INTEGRITY keyed with MD5(user:realm:password)), then Refresh with lifetime 0 so the
allocation is released at once. Over UDP, TCP or TLS, as the browser would reach the server.
The round-trip time is that of the first request.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import ssl
import struct
import time
import urllib.parse
from dataclasses import dataclass

MAGIC = 0x2112A442
ALLOCATE, REFRESH = 0x0003, 0x0004
SUCCESS, ERROR = 0x0100, 0x0110
USERNAME, MESSAGE_INTEGRITY, ERROR_CODE, LIFETIME = 0x0006, 0x0008, 0x0009, 0x000D
REALM, NONCE, XOR_RELAYED_ADDRESS, REQUESTED_TRANSPORT = 0x0014, 0x0015, 0x0016, 0x0019
UDP_PROTOCOL = 17


class ProbeError(RuntimeError):
    """The TURN server did not grant an allocation; the message says what it answered."""


@dataclass(frozen=True)
class Allocation:
    relayed: str       # "ip:port" the server relays from
    rtt_ms: float      # round trip of the first request
    url: str


def _attr(kind: int, value: bytes) -> bytes:
    pad = (4 - len(value) % 4) % 4
    return struct.pack("!HH", kind, len(value)) + value + b"\0" * pad


def _message(kind: int, tid: bytes, attrs: bytes, key: bytes | None = None) -> bytes:
    if key is None:
        return struct.pack("!HHI", kind, len(attrs), MAGIC) + tid + attrs
    # MESSAGE-INTEGRITY covers the header with a length that already counts the attribute.
    head = struct.pack("!HHI", kind, len(attrs) + 24, MAGIC) + tid
    mac = hmac.new(key, head + attrs, hashlib.sha1).digest()
    return head + attrs + _attr(MESSAGE_INTEGRITY, mac)


def _parse(data: bytes, tid: bytes) -> tuple[int, dict[int, bytes]]:
    if len(data) < 20:
        raise ProbeError("a truncated answer (not a TURN server?)")
    kind, length, magic = struct.unpack("!HHI", data[:8])
    if magic != MAGIC or data[8:20] != tid:
        raise ProbeError("an answer that is not STUN (is this port a TURN server?)")
    attrs: dict[int, bytes] = {}
    pos = 20
    while pos + 4 <= 20 + length:
        akind, alen = struct.unpack("!HH", data[pos:pos + 4])
        attrs.setdefault(akind, data[pos + 4:pos + 4 + alen])
        pos += 4 + alen + (4 - alen % 4) % 4
    return kind, attrs


def _error(attrs: dict[int, bytes]) -> tuple[int, str]:
    raw = attrs.get(ERROR_CODE, b"\0\0\0\0")
    return raw[2] * 100 + raw[3], raw[4:].decode(errors="replace")


def _xor_address(raw: bytes) -> str:
    port = struct.unpack("!H", raw[2:4])[0] ^ (MAGIC >> 16)
    if raw[1] == 1:
        ip = struct.unpack("!I", raw[4:8])[0] ^ MAGIC
        return f"{socket.inet_ntoa(struct.pack('!I', ip))}:{port}"
    return f"[ipv6]:{port}"


class _Conn:
    def __init__(self, host: str, port: int, transport: str, tls: bool, timeout: float):
        self.transport, self.timeout = transport, timeout
        if transport == "udp":
            family, stype, proto, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM)[0]
            self.sock = socket.socket(family, stype, proto)
            self.sock.settimeout(timeout / 3)
            self.sock.connect(sockaddr)
        else:
            raw = socket.create_connection((host, port), timeout=timeout)
            self.sock = (ssl.create_default_context().wrap_socket(raw, server_hostname=host)
                         if tls else raw)

    def ask(self, msg: bytes) -> bytes:
        if self.transport == "udp":
            for _ in range(3):  # retransmit: UDP loses packets
                self.sock.send(msg)
                try:
                    return self.sock.recv(65536)
                except TimeoutError:
                    continue
            raise TimeoutError
        self.sock.sendall(msg)
        head = self._read(20)
        return head + self._read(struct.unpack("!H", head[2:4])[0])

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ProbeError("the server closed the connection")
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()


def allocate(url: str, username: str, password: str, timeout: float = 6.0) -> Allocation:
    """Allocate (and release) a relay on the TURN server of an ICE URL; ProbeError if refused."""
    scheme, _, rest = url.partition(":")
    parts = urllib.parse.urlsplit("//" + rest)
    tls = scheme == "turns"
    query = urllib.parse.parse_qs(parts.query)
    transport = query.get("transport", ["tcp" if tls else "udp"])[0]
    host, port = parts.hostname or "", parts.port or (5349 if tls else 3478)
    where = f"{host}:{port}/{transport}{'+tls' if tls else ''}"
    try:
        conn = _Conn(host, port, transport, tls, timeout)
    except (OSError, ssl.SSLError) as exc:
        raise ProbeError(f"cannot reach {where}: {exc}") from None
    try:
        transport_attr = _attr(REQUESTED_TRANSPORT, bytes([UDP_PROTOCOL, 0, 0, 0]))
        tid = os.urandom(12)
        t0 = time.monotonic()
        kind, attrs = _parse(conn.ask(_message(ALLOCATE, tid, transport_attr)), tid)
        rtt = (time.monotonic() - t0) * 1000
        if kind != ALLOCATE | ERROR or _error(attrs)[0] != 401:
            raise ProbeError(f"{where} answered an unauthenticated Allocate with "
                             f"{_error(attrs)} instead of asking for credentials")
        realm, nonce = attrs.get(REALM, b""), attrs.get(NONCE, b"")
        key = hashlib.md5(f"{username}:{realm.decode()}:{password}".encode()).digest()  # noqa: S324 - TURN's key derivation
        auth = _attr(USERNAME, username.encode()) + _attr(REALM, realm) + _attr(NONCE, nonce)
        tid = os.urandom(12)
        kind, attrs = _parse(conn.ask(_message(ALLOCATE, tid, transport_attr + auth, key)), tid)
        if kind != ALLOCATE | SUCCESS:
            code, reason = _error(attrs)
            raise ProbeError(f"{where} refused the allocation: {code} {reason}".rstrip())
        relayed = _xor_address(attrs.get(XOR_RELAYED_ADDRESS, b"\0" * 8))
        tid = os.urandom(12)
        conn.ask(_message(REFRESH, tid, _attr(LIFETIME, struct.pack("!I", 0)) + auth, key))
        return Allocation(relayed, rtt, url)
    except TimeoutError:
        raise ProbeError(f"no answer from {where} within {timeout:.0f}s") from None
    except ConnectionRefusedError:
        raise ProbeError(f"nothing answers on {where} (connection refused)") from None
    except OSError as exc:
        raise ProbeError(f"{where}: {exc}") from None
    finally:
        conn.close()
