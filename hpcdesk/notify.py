"""Push channel: the node agent tells the waiting client about progress and readiness at once.

The waiting client listens on a TCP port and writes `notify.json` (0600, in the private session
directory on the shared filesystem) with its address and a one-time random key. The agent sends
one JSON line per event: the event in clear, with its sequence number and session id, and an
HMAC-SHA256 tag of it under that key. The client ignores a frame whose tag does not verify,
that names another session, or whose sequence number is not above the last one it accepted:
nobody else can inject or replay a "ready". The channel carries no secret: on "ready" the
client reads the password from `connection.json` (0600), which is also the fallback when the
push is lost.
Shared by both sides: imports nothing login-side.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import selectors
import socket
import time
from pathlib import Path
from typing import Any

from hpcdesk.session import read_json, write_json

log = logging.getLogger(__name__)

NOTIFY_FILE = "notify.json"
_MAX_LINE = 64 * 1024


def _tag(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()


def sign(secret: bytes, message: dict[str, Any]) -> bytes:
    """One frame: the message as canonical JSON and its HMAC-SHA256 tag, newline-terminated."""
    body = json.dumps(message, sort_keys=True)
    return json.dumps({"e": body, "m": _tag(secret, body)}).encode() + b"\n"


def verify(secret: bytes, line: bytes) -> dict[str, Any] | None:
    """The message, or None if the frame is malformed or was not made with this secret."""
    try:
        frame = json.loads(line)
        body, tag = str(frame["e"]), str(frame["m"])
    except (ValueError, KeyError, TypeError):
        return None
    if not hmac.compare_digest(_tag(secret, body), tag):
        return None
    try:
        msg = json.loads(body)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


class Listener:
    """Login side: accept pushed events for one session."""

    def __init__(self, session_dir: Path, session_id: str, advertise: str | None) -> None:
        self.session_id = session_id
        self.secret = os.urandom(32)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("0.0.0.0", 0))  # noqa: S104 - nodes connect from the cluster network
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self.last_seq = -1
        host = advertise or socket.getfqdn()
        self.path = session_dir / NOTIFY_FILE
        write_json(self.path, {"host": host, "port": self.sock.getsockname()[1],
                               "secret": self.secret.hex(), "session": session_id})

    def fileno(self) -> int:
        return self.sock.fileno()

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        """Wait up to `timeout` seconds; return verified events in order."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            ready = self.sel.select(remaining)
            for key, _ in ready:
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        conn, _addr = self.sock.accept()
                        conn.setblocking(False)
                        self.sel.register(conn, selectors.EVENT_READ, bytearray())
                else:
                    events.extend(self._read(key.fileobj, key.data))  # type: ignore[arg-type]
            if events or remaining <= 0:
                return events

    def _read(self, conn: socket.socket, buf: bytearray) -> list[dict[str, Any]]:
        try:
            chunk = conn.recv(65536)
        except OSError:
            chunk = b""
        buf.extend(chunk)
        out = []
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            msg = verify(self.secret, line)
            seq = msg.get("seq") if msg else None
            if (msg is None or msg.get("session") != self.session_id
                    or not isinstance(seq, int) or seq <= self.last_seq):
                log.warning("ignored an unauthenticated or replayed push event")
                continue
            self.last_seq = seq
            out.append(msg)
        if not chunk or len(buf) > _MAX_LINE:
            self.sel.unregister(conn)
            conn.close()
        return out

    def close(self) -> None:
        for key in list(self.sel.get_map().values()):
            with contextlib.suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


class Notifier:
    """Node side: best effort; a lost push only means the client falls back to the files."""

    def __init__(self, session_dir: Path) -> None:
        self.target = read_json(session_dir / NOTIFY_FILE)
        self.seq = 0
        self.disabled = self.target is None

    def send(self, event: dict[str, Any]) -> bool:
        if self.disabled or self.target is None:
            return False
        self.seq += 1
        msg = {**event, "seq": self.seq, "session": self.target["session"], "ts": time.time()}
        frame = sign(bytes.fromhex(self.target["secret"]), msg)
        try:
            with socket.create_connection((self.target["host"], int(self.target["port"])),
                                          timeout=2) as s:
                s.sendall(frame)
            return True
        except OSError as exc:
            # Refused (the client stopped waiting) or filtered (a firewall): either way, don't
            # delay every later phase by a connect timeout; the client reads the files.
            log.info("push to the waiting client failed (%s); it will read the files", exc)
            self.disabled = True
            return False
