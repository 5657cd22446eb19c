"""A site's TURN REST service, faked in the test process (no real one runs here): the TURN REST
API draft's `GET URI?service=turn&username=USER` answered with
`{"username", "password", "ttl", "uris"}`, each query recorded."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

Answer = Callable[[str], dict[str, Any]]


@dataclass(frozen=True)
class Asked:
    path: str               # as sent, query included
    username: str           # the query's username
    auth_user: str | None   # the X-Auth-User header


@contextlib.contextmanager
def fake_turn_rest(answer: Answer, ip: str = "127.0.0.1") -> Iterator[tuple[str, list[Asked]]]:
    """The service on `ip` (a port of the kernel's choice) answering `answer(username)`;
    yields its URI and the list of queries it has answered so far."""
    asked: list[Asked] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            username = parse_qs(urlsplit(self.path).query)["username"][0]
            asked.append(Asked(self.path, username, self.headers.get("x-auth-user")))
            body = json.dumps(answer(username)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((ip, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{ip}:{server.server_address[1]}/turn", asked
    finally:
        server.shutdown()
        server.server_close()


def use_auth_secret(secret: str, uris: list[str], ttl: int = 300) -> Answer:
    """Answers as a real service in front of coturn's use-auth-secret does: username
    EXPIRY:USER, password base64(HMAC-SHA1(secret, username))."""
    def answer(username: str) -> dict[str, Any]:
        name = f"{int(time.time()) + ttl}:{username}"
        password = base64.b64encode(hmac.new(secret.encode(), name.encode(),
                                             hashlib.sha1).digest()).decode()
        return {"username": name, "password": password, "ttl": ttl, "uris": uris}
    return answer
