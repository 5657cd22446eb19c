"""Is anybody looking? A viewer is a page that Selkies itself counts as connected.

Selkies 2.x lists the pages connected to its streaming transport at `GET <path>api/sessions`
(authenticated: basic auth, or in token mode a session token). Only a client that passed
Selkies' own authentication and opened the stream appears there: an idle `nc` to the web
port, a port scan or a health check is not a viewer and does not keep a GPU busy past the
idle timeout. The agent asks only after proving that the port's listener is its own
(health.who_listens), since the question carries the desktop's credentials.

Web UIs without that list (the VNC interface, the selkies-project images' selkies-gstreamer
behind nginx) fall back to counting established TCP connections to the port
(/proc/net/tcp and tcp6), which any connection satisfies.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

from hpcdesk.node import health

ESTABLISHED = "01"


def connected(port: int, proc_net: Path = Path("/proc/net")) -> int:
    """How many established connections have `port` as their local port."""
    return len(health.tcp_sockets(port, ESTABLISHED, proc_net))


def authenticated(host: str, port: int, path: str, authorization: str, https: bool = False,
                  pin: str | None = None, timeout: float = 5.0) -> int | None:
    """How many pages Selkies counts as connected; None when it keeps no such list."""
    conn = health.connection(host, port, https, timeout, pin)
    try:
        conn.request("GET", path + "api/sessions", headers={
            "Authorization": authorization, "Connection": "close"})
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        data = json.loads(resp.read(1 << 20))
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    sessions = data.get("sessions") if isinstance(data, dict) else None
    return len(sessions) if isinstance(sessions, list) else None
