"""Readiness: an authenticated HTTP 200 from the web UI (and a 401 without credentials)."""

from __future__ import annotations

import base64
import http.client
import ssl


def http_status(host: str, port: int, user: str | None, password: str | None,
                https: bool = False, timeout: float = 2.0, path: str = "/") -> int | None:
    """The HTTP status of GET path, or None if nothing answered."""
    headers = {"Connection": "close"}
    if user is not None and password is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn: http.client.HTTPConnection
    if https:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the node checks its own server, not the chain
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
