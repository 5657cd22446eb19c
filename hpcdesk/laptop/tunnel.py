"""The tunnel: one SSH link, the session read over it, local forwards, reconnects, Ctrl-C.

Lifecycle: bind the local web port (a port in use fails before anything happens), connect
through every hop, optionally submit, wait until the session is ready (its progress shown),
forward the web port (and, for webrtc with in-job TURN, the TURN port at the same number),
announce the URL, then watch: a dropped connection is re-established with backoff while
the local ports stay open; the session's state is re-read now and then, so a desktop that
ended ends the tunnel. Ctrl-C (or SIGTERM/SIGHUP) closes everything; with
`--cancel-on-exit` it also cancels the job.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import webbrowser
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from types import FrameType
from typing import Any

import paramiko

from hpcdesk import states
from hpcdesk.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, HpcdeskError, Unreachable
from hpcdesk.laptop.auth import Authenticator
from hpcdesk.laptop.endpoint import Endpoint
from hpcdesk.laptop.forward import Forward
from hpcdesk.laptop.link import PROBE_TIMEOUT, Link, connect
from hpcdesk.laptop.remote import ConnectionLost, RemoteHpcdesk
from hpcdesk.laptop.target import Hop
from hpcdesk.quoting import shq

log = logging.getLogger(__name__)

STATE_CHECK = 60.0    # seconds between checks that the session still runs
PROBE_EVERY = 15.0    # seconds between checks that the login node still answers
BACKOFF = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class SessionNotReady(HpcdeskError):
    exit_code = EXIT_FAILED


@dataclass
class Options:
    login: str
    session: str | None = None
    submit: Sequence[str] | None = None
    local_port: int = 0
    open_browser: bool = False
    cancel_on_exit: bool = False
    json: bool = False
    route_args: Sequence[str] = ()  # --jump, --remote-command, --site...: to reopen it


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Tunnel:
    hops: Sequence[Hop]
    auth: Authenticator
    remote_command: str
    site: str | None
    connector: Callable[[Sequence[Hop], Authenticator], Link] = connect
    _link: Link | None = None
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _closing: bool = False
    reconnects: int = 0
    check_now: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.remote = RemoteHpcdesk(self._transport, self.hops[-1].name, self.remote_command,
                                    self.site)

    # -- the link ---------------------------------------------------------------------------
    def _transport(self) -> paramiko.Transport:
        link = self._link
        if link is None or not link.alive():
            raise ConnectionLost("not connected")
        return link.transport

    def source(self, timeout: float) -> paramiko.Transport | None:
        """The live transport, waiting up to `timeout` while a reconnect is under way."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._closing or (self._link is not None and self._link.alive()),
                timeout)
            if self._closing or self._link is None or not self._link.alive():
                return None
            return self._link.transport

    def connect(self) -> None:
        link = self.connector(self.hops, self.auth)
        with self._cond:
            old, self._link = self._link, link
            self._cond.notify_all()
        if old is not None:
            old.close()

    def alive(self) -> bool:
        link = self._link
        return link is not None and link.alive()

    def answers(self) -> bool:
        link = self._link
        return link is not None and link.answers()

    def drop(self) -> None:
        """Give up on the current link (it is dead but does not know it yet)."""
        link = self._link
        if link is not None:
            link.close()

    def reconnect(self) -> float:
        """Connect again until it works (Ctrl-C stops); returns the seconds it took.

        Unreachable hosts are retried with backoff; a refused login or host key ends it.
        """
        start = time.monotonic()
        if self._link is not None:
            self._link.close()
        last, attempt = "", 0
        while not self._closing:
            try:
                self.connect()
                self.reconnects += 1
                return time.monotonic() - start
            except (Unreachable, paramiko.SSHException, OSError, EOFError) as exc:
                reason = str(exc).split("\n")[0]
                if reason != last:
                    say(f"hpcdesk: still reconnecting: {reason}")
                    last = reason
            time.sleep(BACKOFF[min(attempt, len(BACKOFF) - 1)])
            attempt += 1
        raise KeyboardInterrupt  # stop() was called while reconnecting

    @property
    def stopping(self) -> bool:
        return self._closing

    def stop(self) -> None:
        """Ask the tunnel to end (from another thread); `run` then closes everything."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def close(self) -> None:
        self.stop()
        if self._link is not None:
            self._link.close()
        self.auth.close()

    # -- remote hpcdesk, surviving a drop -----------------------------------------------------
    def ask(self, args: Sequence[str], show_progress: bool = False) -> dict[str, Any]:
        """`hpcdesk ARGS --json` on the login node; reconnects and asks again on a drop."""
        while True:
            try:
                return self.remote.json(args, show_progress)
            except ConnectionLost as exc:
                say(f"hpcdesk: the connection to {self.hops[-1].name} dropped ({exc}); "
                    "reconnecting")
                self.reconnect()


def wait_ready(tunnel: Tunnel, key: str) -> dict[str, Any]:
    """The session's status once it is ready; its progress is shown while it starts."""
    data = tunnel.ask(["status", key])
    if data.get("state") in states.WAITING:
        say(f"hpcdesk: session {data.get('session')} is {data.get('state')}; waiting for "
            "the desktop")
        tunnel.ask(["status", str(data.get("session")), "--wait"], show_progress=True)
        data = tunnel.ask(["status", str(data.get("session"))])
    if data.get("state") != states.READY:
        detail = f" ({data['detail']})" if data.get("detail") else ""
        raise SessionNotReady(f"session {data.get('session')} is {data.get('state')}{detail}: "
                              "there is no desktop to connect to",
                              hint="`hpcdesk tunnel --login HOST --submit` starts a new one")
    return data


def announce(ep: Endpoint, local_port: int, login: str, opts: Options) -> None:
    url = ep.local_url(local_port)
    if opts.json:
        print(json.dumps({
            "session": ep.session, "job_id": ep.job_id, "node": ep.node, "state": states.READY,
            "url": url, "user": ep.user, "password": ep.password, "local_port": local_port,
            "remote": f"{ep.host}:{ep.port}", "turn_port": ep.turn_port, "login": login,
            "transport": ep.transport, "tls_fingerprint": ep.tls_fingerprint,
        }, sort_keys=True), flush=True)
        return
    cert = (f"  certificate: self-signed for this session (it names 127.0.0.1); your browser "
            f"warns about the issuer once.\n           SHA-256 {ep.tls_fingerprint}\n"
            if ep.tls_fingerprint else "")
    turn = (f"  TURN:     127.0.0.1:{ep.turn_port} -> {ep.host}:{ep.turn_port}\n"
            if ep.turn_port else "")
    print(f"\nYour desktop is ready, tunnelled through {login}:\n"
          f"  URL:      {url}\n"
          + (f"  user:     {ep.user}\n  password: {ep.password}\n" if ep.password else
             "  (the token after # is your key: share the link with no one)\n") +
          f"  session:  {ep.session} (job {ep.job_id}) on {ep.node}\n{turn}{cert}"
          f"  Ctrl-C closes the tunnel" +
          (" and cancels the job" if opts.cancel_on_exit else "; the desktop keeps running"),
          flush=True)


def open_in_browser(ep: Endpoint, local_port: int) -> Path:
    """Open the desktop without putting its token on a command line: the browser gets a
    private file (0600, removed when the tunnel ends) that forwards to the link (token in
    the fragment; with a password, the browser's prompt asks for what the terminal shows)."""
    folder = Path(tempfile.mkdtemp(prefix="hpcdesk-open-"))
    page = folder / "open.html"
    target = ep.local_url(local_port)
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f'<!doctype html><meta charset="utf-8"><title>hpcdesk</title>'
                 f'<meta http-equiv="refresh" content="0;url={escape(target)}">'
                 f'<script>location.replace({json.dumps(target)})</script>'
                 f'<a href="{escape(target)}">open the desktop</a>\n')
    if not webbrowser.open(page.as_uri()):
        say(f"hpcdesk: could not start a browser; open {ep.local_url(local_port)} yourself")
    return folder


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def close_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) close the tunnel as Ctrl-C does."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise_interrupt)


def run(opts: Options, tunnel: Tunnel) -> int:
    login = tunnel.hops[-1].name
    # Bound first: a local port in use fails before anything is asked of the login node.
    web = Forward(opts.local_port, ("127.0.0.1", 0), tunnel.source, "web",
                  tunnel.check_now.set)
    forwards = [web]
    session: str | None = None  # once it is known to exist on the login node
    ended = interrupted = False
    opened: Path | None = None
    code = EXIT_INTERRUPTED
    try:
        via = " via " + ", ".join(h.describe() for h in tunnel.hops[:-1]) \
            if len(tunnel.hops) > 1 else ""
        say(f"hpcdesk: connecting to {tunnel.hops[-1].describe()}{via}")
        tunnel.connect()
        key = opts.session
        if opts.submit is not None:
            sub = tunnel.ask(["submit", "--no-wait", *opts.submit, "--connect", "tunnel"],
                             show_progress=True)
            key = session = str(sub["session"])
            say(f"hpcdesk: session {session} submitted; from this computer later: "
                f"{reopen_command(session, opts)}")
        data = wait_ready(tunnel, str(key))
        session = str(data["session"])
        ep = Endpoint.from_status(data)
        web.retarget(ep.target)
        if ep.turn_port:
            forwards.append(Forward(ep.turn_port, (ep.host, ep.turn_port), tunnel.source,
                                    "TURN, same number as on the node", tunnel.check_now.set))
        for fw in forwards:
            fw.start()
        announce(ep, web.port, login, opts)
        if opts.open_browser:
            opened = open_in_browser(ep, web.port)
        code = watch(tunnel, ep)
        ended = not tunnel.stopping
    except KeyboardInterrupt:
        interrupted = True
        say("\nhpcdesk: closing the tunnel")
    finally:
        for fw in forwards:
            fw.close()
        if opened is not None:
            shutil.rmtree(opened, ignore_errors=True)
        if session and not ended and (interrupted or opts.cancel_on_exit):
            _leave(tunnel, session, opts)
        tunnel.close()
    return code


def watch(tunnel: Tunnel, ep: Endpoint) -> int:
    """Keep the link up until the session ends (or Ctrl-C).

    The link is probed every PROBE_EVERY seconds (a silently dead path is closed and
    reconnected); the session's state is read every STATE_CHECK seconds, and at once when
    the node refused a forwarded connection (the desktop may have ended)."""
    next_check = time.monotonic() + STATE_CHECK
    next_probe = time.monotonic() + PROBE_EVERY
    while True:
        if tunnel.check_now.wait(0.5):
            tunnel.check_now.clear()
            next_check = 0.0
        if tunnel.stopping:
            return EXIT_OK
        if tunnel.alive() and time.monotonic() >= next_probe:
            next_probe = time.monotonic() + PROBE_EVERY
            if not tunnel.answers():
                say(f"hpcdesk: {tunnel.hops[-1].name} has not answered for "
                    f"{PROBE_TIMEOUT:.0f}s")
                tunnel.drop()
        if not tunnel.alive():
            say(f"hpcdesk: the SSH connection to {tunnel.hops[-1].name} dropped; reconnecting "
                "(the local port stays open)")
            took = tunnel.reconnect()
            say(f"hpcdesk: reconnected after {took:.1f}s; the tunnel is up again")
            next_check = 0.0
        if time.monotonic() >= next_check:
            data = tunnel.ask(["status", ep.session])
            if data.get("state") != states.READY:
                detail = f" ({data['detail']})" if data.get("detail") else ""
                say(f"hpcdesk: session {ep.session} is {data.get('state')}{detail}; "
                    "closing the tunnel")
                return EXIT_FAILED if data.get("state") == states.FAILED else EXIT_OK
            next_check = time.monotonic() + STATE_CHECK


def _ssh_name(hop: Hop, with_port: bool) -> str:
    if hop.name != hop.hostname:  # a Host alias: the user's ssh config knows the rest
        return hop.name
    port = f":{hop.port}" if with_port and hop.port != 22 else ""
    return f"{hop.user}@{hop.hostname}{port}"


def ssh_command(tunnel: Tunnel, remote: str) -> str:
    """The `ssh` command line that runs `remote` on the login node, as the tunnel reaches it."""
    *jumps, hop = tunnel.hops
    argv = ["ssh"]
    if jumps:
        argv += ["-J", ",".join(_ssh_name(h, True) for h in jumps)]
    if hop.name == hop.hostname and hop.port != 22:
        argv += ["-p", str(hop.port)]
    return " ".join(shq(a) for a in [*argv, _ssh_name(hop, False), remote])


def reopen_command(session: str, opts: Options) -> str:
    """`hpcdesk tunnel` to this session as this laptop reaches it (login, jump hosts...)."""
    return " ".join(["hpcdesk", "tunnel", shq(session), "--login", shq(opts.login),
                     *(shq(a) for a in opts.route_args)])


def _leave(tunnel: Tunnel, session: str, opts: Options) -> None:
    """The tunnel ends before the session: say how to come back, or cancel it."""
    cancel = ssh_command(tunnel, tunnel.remote.command_line(["cancel", session]))
    if not opts.cancel_on_exit:
        say(f"hpcdesk: tunnel closed; session {session} keeps running.\n"
            f"  reopen:  {reopen_command(session, opts)}\n"
            f"  stop it: {cancel}")
        return
    say(f"hpcdesk: cancelling session {session} (--cancel-on-exit)")
    with contextlib.suppress(KeyboardInterrupt):
        try:
            if not tunnel.alive():
                tunnel.connect()
            data = tunnel.remote.json(["cancel", session])
            say(f"hpcdesk: session {session} is {data.get('state')}")
            return
        except (HpcdeskError, ConnectionLost, paramiko.SSHException, OSError) as exc:
            say(f"hpcdesk: could not cancel session {session}: {exc}")
    say(f"  stop it yourself: {cancel}")
