"""Readiness: an authenticated HTTP 200 from the web UI (and a 401 without credentials).

In token mode (desktop.auth: token) the page itself loads without credentials; there, ready
means the page answers 200 and a WebSocket upgrade without a token is refused (401).
"""

from __future__ import annotations

import base64
import http.client
import secrets
import ssl


def http_status(host: str, port: int, user: str | None, password: str | None,
                https: bool = False, timeout: float = 2.0, path: str = "/") -> int | None:
    """The HTTP status of GET path, or None if nothing answered."""
    headers = {"Connection": "close"}
    if user is not None and password is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn = _connection(host, port, https, timeout)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _connection(host: str, port: int, https: bool, timeout: float) -> http.client.HTTPConnection:
    if https:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the node checks its own server, not the chain
        return http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def anonymous_websocket_status(host: str, port: int, path: str, https: bool = False,
                               timeout: float = 2.0) -> int | None:
    """The HTTP status a WebSocket upgrade without any token gets (101 means it streams)."""
    conn = _connection(host, port, https, timeout)
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    try:
        conn.request("GET", path, headers={
            "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": key})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
