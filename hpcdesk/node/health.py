"""Readiness: an authenticated HTTP 200 from the web UI (and a 401 without credentials).

In token mode (desktop.auth: token) the page itself loads without credentials; there, ready
means the page answers 200 and a client without a valid token gets nothing
(`anonymous_refused`: the WebSocket for websockets; the ICE servers and the signalling for
webrtc).
"""

from __future__ import annotations

import base64
import http.client
import json
import secrets
import ssl
from typing import TYPE_CHECKING

from hpcdesk.node import token_gate
from hpcdesk.node.errors import StartError

if TYPE_CHECKING:
    from hpcdesk.node.runtime import DesktopPlan



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
def provision_tokens(host: str, port: int, path: str, master_token: str,
                     tokens: dict[str, dict[str, object]], https: bool = False,
                     timeout: float = 5.0) -> int | None:
    """Replace Selkies' token table (POST api/tokens, the master token as bearer)."""
    conn = _connection(host, port, https, timeout)
    try:
        conn.request("POST", path, body=json.dumps(tokens), headers={
            "Authorization": f"Bearer {master_token}", "Content-Type": "application/json",
            "Connection": "close"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def probe(plan: DesktopPlan, probe_host: str) -> tuple[bool, str | None, int | None]:
    """One look at the web UI: (ready, the session token in token mode, HTTP status)."""
    https = plan.request.desktop.https
    if plan.master_token:  # token mode: the page itself loads without credentials
        status = http_status(probe_host, plan.web_port, None, None, https=https,
                             timeout=1.0, path=plan.url_path)
        token = token_ready(plan, probe_host) if status == 200 else None
        return token is not None, token, status
    status = http_status(probe_host, plan.web_port, plan.user, plan.password,
                         https=https, timeout=1.0, path=plan.url_path)
    if status != 200:
        return False, None, status
    anon = http_status(probe_host, plan.web_port, None, None, https=https,
                       path=plan.url_path)
    if anon != 401:
        raise StartError(f"the web UI answered {anon} without credentials (expected "
                         "401): refusing to publish an unprotected desktop")
    return True, None, status


def anonymous_refused(host: str, port: int, prefix: str, transport: str, https: bool,
                      timeout: float = 3.0) -> bool | None:
    """Token mode: True when every way in refused a client without a valid token; None while
    the web UI is not serving yet. StartError when something answered such a client.
    - websockets: the streaming WebSocket refuses an upgrade without a token (401);
    - webrtc: `api/turn` (the ICE servers, with TURN credentials) answers 401, and the
      signalling socket closes a client's HELLO without a token, or with a wrong one, with
      4001 before it says anything (no session, no SDP, no media)."""
    refuse = "refusing to publish a desktop that streams to anyone"
    if transport != "webrtc":
        ws = anonymous_websocket_status(host, port, prefix + "api/websockets", https=https,
                                        timeout=timeout)
        if ws == 101:
            raise StartError(f"the web UI accepted a WebSocket without a token: {refuse}")
        return True if ws == 401 else None
    turn = http_status(host, port, None, None, https=https, timeout=timeout,
                       path=prefix + "api/turn")
    if turn == 200:
        raise StartError("the web UI handed its ICE servers (api/turn) to a client without "
                         f"a token: {refuse}")
    if turn != 401:
        return None
    # As the page says it (a slot-1 controller), so that only the token can be missing.
    for hello in ({"client_type": "controller", "client_slot": 1},
                  {"client_type": "controller", "client_slot": 1, "client_token": "not-a-token"}):
        verdict = token_gate.signalling_verdict(host, port, prefix + "api/webrtc/signaling",
                                                hello, https, timeout)
        if verdict == "answered":
            raise StartError("the WebRTC signalling socket answered a client without a valid "
                             f"token: {refuse}")
        if verdict != "refused":
            return None
    return True


def token_ready(plan: DesktopPlan, probe_host: str) -> str | None:
    """Token mode, once the page answers: a client without a valid token must get nothing
    (anonymous_refused), then the owner's session token is provisioned (shares join the
    table later, node/agent.py). None: not ready yet (Selkies still starting)."""
    assert plan.master_token is not None
    https = plan.request.desktop.https
    if not anonymous_refused(probe_host, plan.web_port, plan.url_path,
                             plan.request.desktop.transport, https):
        return None
    token = secrets.token_urlsafe(24)
    status = provision_tokens(probe_host, plan.web_port, plan.url_path + "api/tokens",
                              plan.master_token, token_gate.table(token, []), https=https)
    if status != 200:
        raise StartError(f"Selkies refused the session token (HTTP {status}); is it "
                         "Selkies 2.x with token support?")
    return token
