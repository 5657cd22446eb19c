"""Token mode: the proof that a client without a valid token gets nothing, and the token table.

Before a token-mode desktop is published the agent shows, against the real web UI, that:
- websockets: the streaming WebSocket refuses an upgrade without a token (401);
- webrtc: `GET api/turn` (the ICE servers, with TURN credentials) answers 401 without a
  token, and the signalling socket closes a client's HELLO that carries no token, or a wrong
  one, with 4001 before it says anything (no session, no SDP, no media).
Then it provisions the token table: the owner's token (controller) and the live shares.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import struct
from collections.abc import Iterable, Mapping

from hpcdesk.node import health
from hpcdesk.shares import Share

REFUSED_CLOSE = 4001  # Selkies' close code for a missing or invalid token


def anonymous_refused(host: str, port: int, prefix: str, transport: str, https: bool,
                      timeout: float = 3.0) -> bool | None:
    """True: every way in refused a token-less client. None: the web UI is not serving yet.
    RuntimeError: something answered a client without a valid token."""
    if transport == "webrtc":
        turn = health.http_status(host, port, None, None, https=https, timeout=timeout,
                                  path=prefix + "api/turn")
        if turn == 200:
            raise RuntimeError("the web UI handed its ICE servers (api/turn) to a client "
                               "without a token")
        if turn != 401:
            return None
        # As the page says it (a slot-1 controller), so that only the token can be missing.
        for hello in ({"client_type": "controller", "client_slot": 1},
                      {"client_type": "controller", "client_slot": 1,
                       "client_token": "not-a-token"}):
            verdict = signalling_verdict(host, port, prefix + "api/webrtc/signaling", hello,
                                         https, timeout)
            if verdict == "answered":
                raise RuntimeError("the WebRTC signalling socket answered a client without "
                                   "a valid token")
            if verdict != "refused":
                return None
        return True
    ws = health.anonymous_websocket_status(host, port, prefix + "api/websockets", https=https,
                                           timeout=timeout)
    if ws == 101:
        raise RuntimeError("the web UI accepted a WebSocket without a token")
    return True if ws == 401 else None


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


def provision(host: str, port: int, path: str, master_token: str,
              tokens: dict[str, dict[str, object]], https: bool = False,
              timeout: float = 5.0) -> int | None:
    """Replace Selkies' token table (POST api/tokens with the master token as bearer)."""
    conn = health._connection(host, port, https, timeout)
    try:
        conn.request("POST", path, body=json.dumps(tokens), headers={
            "Authorization": f"Bearer {master_token}", "Content-Type": "application/json",
            "Connection": "close"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
