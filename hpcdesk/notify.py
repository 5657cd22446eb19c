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
import errno
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

from hpcdesk.files import read_json, write_json

log = logging.getLogger(__name__)

NOTIFY_FILE = "notify.json"
_MAX_LINE = 64 * 1024
# Out of file descriptors or kernel memory: accept() fails until something is closed.
_NO_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


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
    # compare_digest refuses a str with non-ASCII characters (TypeError): compare bytes.
    if not hmac.compare_digest(_tag(secret, body).encode(), tag.encode(errors="replace")):
        return None
    try:
        msg = json.loads(body)
    except ValueError:
        return None
    return msg if isinstance(msg, dict) else None


class _Conn:
    __slots__ = ("buf", "since")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.since = time.monotonic()


class Listener:
    """Login side: accept pushed events for one session.

    Anyone on the cluster network can connect, so connections are bounded: at most
    `max_connections` at once (the oldest is dropped for a new one), each closed
    `idle_timeout` seconds after it was accepted, whatever it sent; when accept() finds no
    free descriptor (EMFILE), the oldest connection is dropped, or accepting pauses briefly.
    A real agent connects, sends one line and closes within milliseconds.
    """

    max_connections = 32
    idle_timeout = 10.0
    accept_pause = 0.5

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
        self.conns: dict[socket.socket, _Conn] = {}
        self._paused_until = 0.0
        self.rejected = 0  # frames that did not verify (junk, replays)
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
            self._housekeeping()
            now = time.monotonic()
            remaining = max(0.0, deadline - now)
            wake = [deadline]
            if self.conns:
                wake.append(min(c.since for c in self.conns.values()) + self.idle_timeout)
            if self._paused_until:
                wake.append(self._paused_until)
            ready = self.sel.select(max(0.0, min(wake) - now))
            for key, _ in ready:
                if key.data is None:
                    self._accept()
                else:
                    events.extend(self._read(key.fileobj))  # type: ignore[arg-type]
            if events or remaining <= 0:
                return events

    def _accept(self) -> None:
        try:
            conn, _addr = self.sock.accept()
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in _NO_RESOURCES:
                log.info("push channel: accept failed (%s)", exc)
                return
            log.warning("push channel: cannot accept a connection (%s)", exc.strerror)
            if self.conns:
                self._drop(self._oldest())
            else:  # nothing of ours to close: stop accepting for a moment, not spin
                self.sel.unregister(self.sock)
                self._paused_until = time.monotonic() + self.accept_pause
            return
        if len(self.conns) >= self.max_connections:
            self._drop(self._oldest())
        conn.setblocking(False)
        self.conns[conn] = _Conn()
        self.sel.register(conn, selectors.EVENT_READ, True)

    def _oldest(self) -> socket.socket:
        return min(self.conns, key=lambda c: self.conns[c].since)

    def _drop(self, conn: socket.socket) -> None:
        self.conns.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        conn.close()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        for conn in [c for c, st in self.conns.items() if now - st.since > self.idle_timeout]:
            self._drop(conn)  # connected and silent: not an agent
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            self.sel.register(self.sock, selectors.EVENT_READ, None)

    def _read(self, conn: socket.socket) -> list[dict[str, Any]]:
        state = self.conns.get(conn)
        if state is None:
            return []
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return []
        except OSError:
            chunk = b""
        buf = state.buf
        scan_from = len(buf)  # the bytes before it hold no newline: scan each byte once
        buf.extend(chunk)
        out = []
        start = 0
        while (end := buf.find(b"\n", max(start, scan_from))) != -1:
            line = bytes(buf[start:end])
            start = end + 1
            msg = verify(self.secret, line)
            seq = msg.get("seq") if msg else None
            if (msg is None or msg.get("session") != self.session_id
                    or not isinstance(seq, int) or seq <= self.last_seq):
                self._reject()
                continue
            self.last_seq = seq
            out.append(msg)
        del buf[:start]  # once per read: linear in what arrived
        if not chunk or len(buf) > _MAX_LINE:
            self._drop(conn)
        return out

    def _reject(self) -> None:
        """Count a frame that did not verify; close() says how many, in one line."""
        self.rejected += 1

    def close(self) -> None:
        if self.rejected:
            log.warning("ignored %d push event(s) that were not from this session's agent "
                        "(junk or replays on the notify port)", self.rejected)
        for conn in list(self.conns):
            self._drop(conn)
        with contextlib.suppress(OSError):
            self.sock.close()
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
