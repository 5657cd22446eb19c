"""The audit trail: the agent receives Selkies' audit webhook and keeps one JSON line per event.

Selkies POSTs one JSON object per clipboard transfer, upload, download, printed document and
page connection (metadata only, never the content). The agent listens on a loopback port it
binds itself before Selkies starts (so the socket is proven its own), accepts only requests
that carry this desktop's bearer secret, appends each event to `audit.jsonl` (0600) in the
session directory and, when the site names one, forwards it to `policy.audit_url`.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import queue
import secrets
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hpcdesk.node.selkies_policy import AuditSink

log = logging.getLogger("hpcdesk.audit")

AUDIT_FILE = "audit.jsonl"
MAX_EVENT_BYTES = 64 * 1024
FORWARD_TIMEOUT = 5.0


class AuditReceiver:
    """A loopback HTTP receiver for one desktop's audit events."""

    def __init__(self, session_dir: Path, session_id: str, forward_url: str | None) -> None:
        self.path = session_dir / AUDIT_FILE
        self.session_id = session_id
        self.forward_url = forward_url
        self.token = secrets.token_urlsafe(24)
        self.lock = threading.Lock()
        self.outbox: queue.Queue[bytes | None] = queue.Queue(maxsize=1024)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.send_response(receiver.accept(self.headers.get("Authorization", ""),
                                                   self.headers.get("Content-Length"),
                                                   self.rfile))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.threads = [threading.Thread(target=self.server.serve_forever, name="audit",
                                         daemon=True)]
        if forward_url:
            self.threads.append(threading.Thread(target=self._forward, name="audit-forward",
                                                 daemon=True))

    @property
    def sink(self) -> AuditSink:
        port = self.server.server_address[1]
        return AuditSink(url=f"http://127.0.0.1:{port}/audit", token=self.token)

    def start(self) -> AuditReceiver:
        for t in self.threads:
            t.start()
        return self

    def accept(self, authorization: str, length: str | None, body: Any) -> int:
        """One POST: 204 when recorded, 401 without this desktop's secret, 400 if not JSON."""
        expected = f"Bearer {self.token}".encode()
        if not hmac.compare_digest(authorization.encode(), expected):
            return 401
        try:
            size = int(length or "0")
        except ValueError:
            return 400
        if not 0 < size <= MAX_EVENT_BYTES:
            return 400
        try:
            event = json.loads(body.read(size))
        except ValueError:
            return 400
        if not isinstance(event, dict):
            return 400
        event.setdefault("session", self.session_id)
        self.record(event)
        return 204

    def record(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        with self.lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        if self.forward_url:
            with contextlib.suppress(queue.Full):
                self.outbox.put_nowait(line)

    def _forward(self) -> None:
        failing = False
        while (line := self.outbox.get()) is not None:
            assert self.forward_url is not None
            req = urllib.request.Request(  # noqa: S310 (the site's http(s) URL, schema-checked)
                self.forward_url, data=line, method="POST",
                headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=FORWARD_TIMEOUT):  # noqa: S310
                    pass
                failing = False
            except OSError as exc:
                if not failing:
                    log.warning("forwarding audit events to %s failed: %s (they stay in %s)",
                                self.forward_url, exc, AUDIT_FILE)
                failing = True

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        with contextlib.suppress(queue.Full):
            self.outbox.put_nowait(None)
