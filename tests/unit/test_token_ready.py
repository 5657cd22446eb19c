"""Token-mode readiness against a FAKE Selkies (a stdlib HTTP server that answers like Selkies
2.1.0's routes; the real one is exercised in tests/cluster/test_ood.py): a web UI that lets an
anonymous WebSocket through is never published, and the session token is provisioned with
the master token as bearer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpcdesk.node import health
from hpcdesk.node.errors import StartError


class FakeSelkies(BaseHTTPRequestHandler):
    ws_status = 401
    posted: list[tuple[str, dict[str, Any]]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        status = self.ws_status if self.headers.get("Upgrade") == "websocket" else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeSelkies.posted.append((self.headers.get("Authorization", ""), body))
        ok = self.path == "/desk/api/tokens"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    FakeSelkies.posted = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeSelkies)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def plan(port: int) -> Any:
    request = SimpleNamespace(desktop=SimpleNamespace(https=False, transport="websockets"))
    return SimpleNamespace(master_token="m4ster", web_port=port, url_path="/desk/",
                           request=request)


def test_token_is_provisioned_once_anonymous_websockets_are_refused(
        server: ThreadingHTTPServer, tmp_path: Path) -> None:
    FakeSelkies.ws_status = 401
    token = health.token_ready(plan(server.server_address[1]), "127.0.0.1")
    assert token and len(token) >= 30
    # No mk_control: with it only its holder may type, and a control share could not.
    assert FakeSelkies.posted == [("Bearer m4ster", {token: {"role": "controller"}})]


def test_a_desktop_open_to_anonymous_websockets_is_never_published(
        server: ThreadingHTTPServer) -> None:
    FakeSelkies.ws_status = 101
    with pytest.raises(StartError, match="WebSocket without a token"):
        health.token_ready(plan(server.server_address[1]), "127.0.0.1")
    assert FakeSelkies.posted == []


def test_not_ready_while_the_websocket_route_is_not_up(server: ThreadingHTTPServer) -> None:
    FakeSelkies.ws_status = 409  # Selkies' answer while its websockets mode is not active yet
    assert health.token_ready(plan(server.server_address[1]), "127.0.0.1") is None
    assert FakeSelkies.posted == []
