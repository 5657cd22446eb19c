"""Readiness: an authenticated HTTP 200 from the web UI (and a 401 without credentials).

In token mode (desktop.auth: token) the page itself loads without credentials; there, ready
means the page answers 200 and a client without a valid token gets nothing
(`anonymous_refused`: the WebSocket for websockets; the ICE servers and the signalling for
webrtc).

Before any probe carries a secret, :func:`who_listens` proves whose socket listens on the
port (the one readiness proof for every runtime): a neighbour on a shared node can bind a
port before the web UI does. Every listening socket on the port (/proc/net/tcp and tcp6, any
address) must belong to this user and be an open file of one of the agent's own descendants
(the host runtime's Selkies, the container's web server). Once such a socket listens, no
other user can bind that port on an address it covers, so a connection made after the proof
reaches it. Over HTTPS the session's own certificate is pinned as well.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import http.client
import json
import os
import secrets
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpcdesk.node import token_gate
from hpcdesk.node.errors import PortTaken, StartError
from hpcdesk.trust import owner_name

if TYPE_CHECKING:
    from hpcdesk.node.runtime import DesktopPlan

TCP_LISTEN = "0A"


@dataclass(frozen=True)
class TcpSocket:
    """A TCP socket as /proc/net/tcp{,6} shows it."""

    address: str  # hex, as the kernel prints it
    port: int
    uid: int
    inode: int


@dataclass(frozen=True)
class Proof:
    """Who listens on a port: nobody yet, us (proven), or someone else (named)."""

    ours: bool
    foreign_uids: tuple[int, ...] = ()

    @property
    def nobody(self) -> bool:
        return not self.ours and not self.foreign_uids

    def holders(self) -> str:
        """The users holding the port, for logs and errors ("alice (uid 1001)")."""
        return ", ".join(owner_name(uid) for uid in self.foreign_uids) or "a process of yours " \
            "that this desktop did not start"


def tcp_sockets(port: int, state: str, proc_net: Path = Path("/proc/net")) -> list[TcpSocket]:
    """Every TCP socket in `state` ("0A" listening, "01" established) whose local port is
    `port`, in this network namespace (IPv4 and IPv6): the one reader of /proc/net/tcp."""
    found: list[TcpSocket] = []
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] != state:
                continue
            addr, _, hexport = f[1].rpartition(":")
            if int(hexport, 16) == port:
                found.append(TcpSocket(addr, port, int(f[7]), int(f[9])))
    return found


def listening(port: int, proc_net: Path = Path("/proc/net")) -> list[TcpSocket]:
    """Every listening TCP socket on `port` (IPv4 and IPv6)."""
    return tcp_sockets(port, TCP_LISTEN, proc_net)


def socket_inodes(pids: Iterable[int]) -> set[int]:
    """The socket inodes among the open files of `pids` (readable for our own processes)."""
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def who_listens(port: int, root: int | None = None, proc_net: Path = Path("/proc/net"),
                uid: int | None = None) -> Proof:
    """Prove that every socket listening on `port` is this user's and an open file of a
    descendant of `root` (default: this process, the agent)."""
    from hpcdesk.node.procs import descendants

    me = os.getuid() if uid is None else uid
    sockets = listening(port, proc_net)
    if not sockets:
        return Proof(False)
    ours = socket_inodes(descendants(os.getpid() if root is None else root))
    foreign = tuple(sorted({s.uid for s in sockets if s.uid != me or s.inode not in ours}))
    return Proof(not foreign, foreign)


def cert_fingerprint(der: bytes) -> str:
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to the session's own server: the certificate must be the one the agent made or
    the site gave this session (its SHA-256 fingerprint), or nothing is sent."""

    def __init__(self, host: str, port: int, pin: str | None, timeout: float,
                 context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.pin = pin

    def connect(self) -> None:
        super().connect()
        if self.pin is None:
            return
        assert isinstance(self.sock, ssl.SSLSocket)
        der = self.sock.getpeercert(binary_form=True) or b""
        if cert_fingerprint(der) != self.pin:
            self.sock.close()
            raise ssl.SSLError("the web UI presented another certificate than the session's")


def http_status(host: str, port: int, user: str | None, password: str | None,
                https: bool = False, timeout: float = 2.0, path: str = "/",
                pin: str | None = None) -> int | None:
    """The HTTP status of GET path, or None if nothing answered."""
    headers = {"Connection": "close"}
    if user is not None and password is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    conn = connection(host, port, https, timeout, pin)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def connection(host: str, port: int, https: bool, timeout: float,
                pin: str | None = None) -> http.client.HTTPConnection:
    if https:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the node pins its own certificate, not the chain
        return PinnedHTTPSConnection(host, port, pin, timeout, ctx)
    return http.client.HTTPConnection(host, port, timeout=timeout)


def anonymous_websocket_status(host: str, port: int, path: str, https: bool = False,
                               timeout: float = 2.0) -> int | None:
    """The HTTP status a WebSocket upgrade without any token gets (101 means it streams)."""
    conn = connection(host, port, https, timeout)
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
                     timeout: float = 5.0, pin: str | None = None) -> int | None:
    """Replace Selkies' token table (POST api/tokens, the master token as bearer)."""
    conn = connection(host, port, https, timeout, pin)
    try:
        conn.request("POST", path, body=json.dumps(tokens), headers={
            "Authorization": f"Bearer {master_token}", "Content-Type": "application/json",
            "Connection": "close"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def session_pin(plan: DesktopPlan) -> str | None:
    """The fingerprint of the session's own certificate (HTTPS), which every probe pins."""
    return _fingerprint(str(plan.tls_cert)) if plan.tls_cert else None


@functools.lru_cache(maxsize=8)
def _fingerprint(cert: str) -> str:
    from hpcdesk.node.tls import fingerprint

    return fingerprint(Path(cert))


def probe(plan: DesktopPlan, probe_host: str) -> tuple[bool, str | None, int | None]:
    """One look at the web UI: (ready, the session token in token mode, HTTP status).

    Nothing is sent before the proof that the socket listening on the port is this
    desktop's own (who_listens); a foreign listener raises PortTaken."""
    proof = who_listens(plan.web_port)
    if proof.foreign_uids:
        raise PortTaken(plan.web_port, proof.holders())
    if not proof.ours:
        return False, None, None  # nobody listens yet
    https, pin = plan.request.desktop.https, session_pin(plan)
    if plan.master_token:  # token mode: the page itself loads without credentials
        status = http_status(probe_host, plan.web_port, None, None, https=https,
                             timeout=1.0, path=plan.url_path, pin=pin)
        token = token_ready(plan, probe_host) if status == 200 else None
        return token is not None, token, status
    status = http_status(probe_host, plan.web_port, plan.user, plan.password,
                         https=https, timeout=1.0, path=plan.url_path, pin=pin)
    if status != 200:
        return False, None, status
    anon = http_status(probe_host, plan.web_port, None, None, https=https,
                       path=plan.url_path, pin=pin)
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
                              plan.master_token, token_gate.table(token, []), https=https,
                              pin=session_pin(plan))
    if status != 200:
        raise StartError(f"Selkies refused the session token (HTTP {status}); is it "
                         "Selkies 2.x with token support?")
    return token
