"""TURN inside the job (network.turn: job, or network.connect: tunnel with webrtc).

The agent starts coturn next to the desktop so that WebRTC media can cross any TCP path to
the node (a firewall that passes only TCP, an SSH tunnel forwarding the same port number):
- from the node (`turnserver` on PATH) or, for the apptainer runtime on a node without
  coturn, from the desktop image (`apptainer exec IMAGE turnserver`; hpcdesk's Debian image
  and the selkies-project images ship coturn);
- unprivileged, as the desktop's user, TCP listener only, on a port claimed exactly like the
  web port (node/ports.py), on the node's address and on its loopback (see connect/rtc.py for
  why both);
- UDP relay ports from a block of RELAY_BLOCK ports in network.turn_relay_min..max, claimed
  node-wide (locks.py), so two desktops on one node never share one;
- per-session long-term credentials (random), in a 0600 configuration file, never on argv;
- no admin CLI (`no-cli`); pidfile, log and user database in the session's node-local
  directory, which is removed with the desktop;
- a child of the agent like the desktop's processes: stopped with them, nothing left behind.
"""

from __future__ import annotations

import os
import random
import secrets
import shlex
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from hpcdesk.connect.turn import IceServer
from hpcdesk.node import address
from hpcdesk.node.errors import StartError
from hpcdesk.node.locks import SCOPE, try_claim
from hpcdesk.node.ports import PortLease
from hpcdesk.node.procs import Child, spawn, stop_all
from hpcdesk.schema import RuntimeConfig

RELAY_BLOCK = 16
REALM = "hpcdesk"
USER = "hpcdesk"


@dataclass
class JobTurn:
    port: int
    relay: tuple[int, int]
    username: str
    password: str
    child: Child
    directory: Path
    relay_claim: socket.socket | None

    def ice_server(self, url: str) -> IceServer:
        return IceServer((url,), self.username, self.password)

    def release(self) -> None:
        if self.relay_claim is not None:
            self.relay_claim.close()
            self.relay_claim = None


def claim_relay_block(lo: int, hi: int, scope: str = SCOPE) -> tuple[int, socket.socket]:
    """(first port of a free block, its claim); RuntimeError when every block is taken."""
    starts = list(range(lo, hi - RELAY_BLOCK + 2, RELAY_BLOCK))
    random.shuffle(starts)
    for start in starts:
        claim = try_claim(f"turn-relay-{start}", scope)
        if claim is not None:
            return start, claim
    raise RuntimeError(f"every TURN relay port block in {lo}-{hi} is in use on this node; "
                       "widen network.turn_relay_min..turn_relay_max")


def config_text(directory: Path, port: int, bind_addr: str, relay_ip: str | None,
                relay: tuple[int, int], username: str, password: str) -> str:
    lines = [f"listening-port={port}"]
    if bind_addr not in address.WILDCARDS:
        lines += [f"listening-ip={bind_addr}", "listening-ip=127.0.0.1"]
    if relay_ip:
        lines.append(f"relay-ip={relay_ip}")
    lines += [
        f"min-port={relay[0]}", f"max-port={relay[1]}",
        "no-udp", "no-tls", "no-dtls", "no-cli", "no-multicast-peers", "fingerprint",
        "verbose",  # session lines with relayed byte counts (coturn logs them only so)
        "lt-cred-mech", f"realm={REALM}", f"user={username}:{password}",
        f"userdb={directory / 'turndb'}", f"pidfile={directory / 'turnserver.pid'}",
        f"log-file={directory / 'turnserver.log'}", "simple-log", "no-stdout-log",
    ]
    return "\n".join(lines) + "\n"


def _relay_ip(bind_addr: str, published_host: str) -> str | None:
    if bind_addr not in address.WILDCARDS:
        return bind_addr
    try:
        ip = socket.gethostbyname(published_host)
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def command(runtime: RuntimeConfig, directory: Path) -> list[str]:
    """How to run coturn: the node's `turnserver`, else the apptainer image's."""
    found = shutil.which("turnserver")
    if found:
        return [found]
    if runtime.kind == "apptainer":
        from hpcdesk.images import ImageError, resolve_image

        try:
            image = resolve_image(runtime.image or "", runtime.image_dir)
        except ImageError as exc:
            raise StartError(f"the in-job TURN: {exc}") from None
        return [*shlex.split(runtime.apptainer), "exec", "--cleanenv", "--contain",
                "--bind", f"{directory}:{directory}", image, "turnserver"]
    raise StartError("the in-job TURN needs coturn's `turnserver` on this node (Debian: "
                     "apt-get install coturn); or use network.turn: none with --connect "
                     "direct or turn")


def start(directory: Path, ports: PortLease, bind_addr: str,
          published_host: str, relay_range: tuple[int, int], env: dict[str, str],
          runtime: RuntimeConfig, timeout: float = 30.0) -> JobTurn:
    """Start coturn; returns once it accepts TCP connections on its port."""
    argv = command(runtime, directory)
    try:
        port = ports.acquire()
        first, lock = claim_relay_block(*relay_range)
    except RuntimeError as exc:
        raise StartError(str(exc)) from None
    relay = (first, first + RELAY_BLOCK - 1)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    conf = directory / "turnserver.conf"
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(config_text(directory, port, bind_addr, _relay_ip(bind_addr, published_host),
                             relay, USER, password))
    child = spawn("turn server", [*argv, "-c", str(conf)], env,
                  directory / "turnserver.out")
    turn = JobTurn(port, relay, USER, password, child, directory, lock)
    probe = "127.0.0.1"
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            turn.release()
            raise StartError("the in-job TURN server failed to start: " + child.describe_exit())
        try:
            socket.create_connection((probe, port), timeout=1.0).close()
            return turn
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop_all([child])
            turn.release()
            raise StartError(f"the in-job TURN server did not listen on port {port} within "
                             f"{timeout:.0f}s")
        time.sleep(0.05)
