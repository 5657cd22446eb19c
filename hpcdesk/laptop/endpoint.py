"""What the tunnel forwards to, from `hpcdesk status --json` on the login node (the
desktop's connection.json read through `Connection`, as everyone reads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hpcdesk.connection import Connection
from hpcdesk.errors import Unreachable

LOCAL_HOST = "127.0.0.1"  # the node's self-signed certificate names it (and localhost)


@dataclass(frozen=True)
class Endpoint:
    session: str
    job_id: str | None
    node: str | None
    scheme: str
    host: str                 # the node's web address, as the login node reaches it
    port: int
    path: str                 # path, query and fragment of the desktop's URL
    user: str
    password: str
    transport: str            # "websockets" | "webrtc"
    turn_port: int | None     # the in-job TURN's TCP port (webrtc): same number on both ends
    tls_fingerprint: str | None

    @classmethod
    def from_status(cls, data: dict[str, Any]) -> Endpoint:
        """From `status --json`: the desktop's connection.json, typed (`connection`, the
        agent's Connection), and the job around it. A login node whose hpcdesk predates
        `connection` gives the same facts as flat keys, its `url` already the browser's link."""
        raw = data.get("connection")
        conn = Connection.from_dict(raw if isinstance(raw, dict) else {**data, "token": None})
        url = conn.browser_link()
        if not url:
            raise Unreachable(f"hpcdesk on the login node gave no URL for session "
                              f"{data.get('session')} (state {data.get('state')})")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Unreachable(f"the session's URL {url!r} is not one the tunnel can forward")
        path = parts.path or "/"
        path += f"?{parts.query}" if parts.query else ""
        path += f"#{parts.fragment}" if parts.fragment else ""
        turn = conn.turn_port
        return cls(
            session=str(conn.session or data.get("session")), job_id=_opt_str(data.get("job_id")),
            node=conn.node or _opt_str(data.get("node")), scheme=parts.scheme,
            host=parts.hostname, port=parts.port or (443 if parts.scheme == "https" else 80),
            path=path, user=conn.user or "", password=conn.password or "",
            transport=conn.transport or "websockets",
            turn_port=turn if isinstance(turn, int) and turn > 0 else None,
            tls_fingerprint=_opt_str(conn.tls_fingerprint),
        )

    @property
    def target(self) -> tuple[str, int]:
        return (self.host, self.port)

    def local_url(self, port: int) -> str:
        """The desktop through the tunnel: a token rides in the fragment; a password is never
        put into the URL (Chromium then refuses the page's own fetch() calls, and a WebRTC
        desktop never gets its ICE servers): the browser asks for it."""
        return f"{self.scheme}://{LOCAL_HOST}:{port}{self.path}"


def _opt_str(value: object) -> str | None:
    return None if value is None else str(value)
