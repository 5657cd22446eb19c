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
                           request=request, tls_cert=None)


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


class FakeWebrtcSelkies:
    """A FAKE Selkies webrtc side (aiohttp, in a thread): `api/turn` answers `turn_status`;
    the signalling socket closes a HELLO with `close_code`, or answers it when that is None.
    The real one is exercised in tests/cluster/test_access.py."""

    def __init__(self, turn_status: int, close_code: int | None) -> None:
        import asyncio

        from aiohttp import WSCloseCode, web

        async def turn(_: web.Request) -> web.Response:
            return web.Response(status=turn_status)

        async def signalling(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            msg = await ws.receive()
            self.hellos.append(str(msg.data))
            if close_code is None:
                await ws.send_str("HELLO")
            await ws.close(code=close_code or WSCloseCode.OK)
            return ws

        self.hellos: list[str] = []
        app = web.Application()
        app.add_routes([web.get("/api/turn", turn), web.get("/api/webrtc/signaling", signalling)])
        self.loop = asyncio.new_event_loop()
        runner = self.runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def refused(self) -> bool | None:
        return health.anonymous_refused("127.0.0.1", self.port, "/", "webrtc", False)

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.mark.parametrize("turn,close,expect", [
    (401, 4001, True),             # Selkies 2.1.0 in secure mode: nothing for a stranger
    (503, 4001, None),             # its WebRTC side still starting: not ready yet
    (401, 4000, None),             # closed for another reason: not proven, not ready
    (200, 4001, "ICE servers"),    # ICE servers (TURN credentials) for anyone: never published
    (401, None, "signalling"),     # signalling answers a stranger: never published
])
def test_webrtc_is_published_only_when_a_stranger_gets_nothing(
        turn: int, close: int | None, expect: object) -> None:
    fake = FakeWebrtcSelkies(turn, close)
    try:
        if isinstance(expect, str):
            with pytest.raises(StartError, match=expect):
                fake.refused()
        else:
            assert fake.refused() is expect
        if turn == 401:  # both HELLOs (no token, a wrong one) as the page sends them
            assert all('"client_slot": 1' in h for h in fake.hellos)
            assert fake.hellos[0].startswith("HELLO client ")
    finally:
        fake.stop()
