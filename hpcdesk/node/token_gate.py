"""Token mode's parts: a minimal client for Selkies' WebRTC signalling socket (what a HELLO
without a valid token gets: health.anonymous_refused) and Selkies' token table (the owner's
token and the live shares, node/agent.py)."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import struct
from collections.abc import Iterable, Mapping

from hpcdesk.shares import Share

REFUSED_CLOSE = 4001  # Selkies' close code for a missing or invalid token


def _socket(host: str, port: int, https: bool, timeout: float) -> socket.socket:
    raw = socket.create_connection((host, port), timeout=timeout)
    if not https:
        return raw
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the node checks its own server, not the chain
    return ctx.wrap_socket(raw)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def signalling_verdict(host: str, port: int, path: str, hello: Mapping[str, object], https: bool,
                       timeout: float) -> str:
    """Open the signalling WebSocket, send `HELLO client META`, and say what came back:
    "refused" (closed with 4001 and nothing else), "answered" (any message), or "unknown"
    (no connection, no upgrade, another close: not serving yet)."""
    try:
        sock = _socket(host, port, https, timeout)
    except OSError:
        return "unknown"
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += _read_exact(sock, 1)
            if len(head) > 16384:
                return "unknown"
        if not head.startswith(b"HTTP/1.1 101"):
            return "unknown"
        sock.sendall(_frame(f"HELLO client {json.dumps(hello)}".encode()))
        while True:
            b0, b1 = _read_exact(sock, 2)
            size = b1 & 0x7F
            if size == 126:
                size = struct.unpack(">H", _read_exact(sock, 2))[0]
            elif size == 127:
                size = struct.unpack(">Q", _read_exact(sock, 8))[0]
            payload = _read_exact(sock, size)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 0
                return "refused" if code == REFUSED_CLOSE else "unknown"
            if opcode in (0x1, 0x2):
                return "answered"
            # ping/pong: keep reading
    except (OSError, ValueError):
        return "unknown"
    finally:
        sock.close()


def _frame(data: bytes) -> bytes:
    """One masked text frame (a client must mask)."""
    mask = os.urandom(4)
    size = len(data)
    head = bytes([0x81])
    if size < 126:
        head += bytes([0x80 | size])
    elif size < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", size)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", size)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def table(owner_token: str, shares: Iterable[Share]) -> dict[str, dict[str, object]]:
    """Selkies' token table: the owner (controller) and each live share with its role.
    No entry holds mk_control: with one set, only its holder may type, and a control share
    could not."""
    out: dict[str, dict[str, object]] = {owner_token: {"role": "controller"}}
    for share in shares:
        out[share.token] = {"role": share.role}
    return out
