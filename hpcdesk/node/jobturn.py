"""TURN inside the job (network.turn: job, or network.connect: tunnel with webrtc).

The agent starts coturn next to the desktop so that WebRTC media can cross any TCP path to
the node (a firewall that passes only TCP, an SSH tunnel forwarding the same port number):
- from the node (`turnserver` on PATH) or, for the apptainer runtime on a node without
  coturn, from the desktop image (`apptainer exec IMAGE turnserver`; hpcdesk's Debian image
  and the selkies-project images ship coturn);
- unprivileged, as the desktop's user, TCP listener only, on a port claimed exactly like the
  web port (node/ports.py), on the node's address and on its loopback (see connect/rtc.py for
  why both);
- UDP relay ports from a block of RELAY_BLOCK ports in network.turn_relay_min..max whose
  ports are free (pick_relay_block; no claim by name that a neighbour could squat);
- relaying only to the desktop's own media address (`allowed-peer-ip` = the node's address,
  every other IPv4/IPv6 peer denied, no RFC 6062 TCP relay): a viewer's credentials cannot
  reach the cluster network through it;
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

    def ice_server(self, url: str) -> IceServer:
        return IceServer((url,), self.username, self.password)

    def release(self) -> None:
        """Nothing to give back: the relay ports are coturn's own sockets."""


def pick_relay_block(lo: int, hi: int, addr: str = "0.0.0.0") -> int:  # noqa: S104
    """The first port of a block whose UDP ports are all free now; RuntimeError when none.

    No block is claimed by name: a name costs a squatter nothing (1,024 of them once blocked
    every in-job TURN of a node). Blocking a block costs holding its real UDP ports, and two
    coturns that pick the same block at the same moment (rare: the pick is random) still
    work, because coturn takes another port of its range when a relay port is in use."""
    starts = list(range(lo, hi - RELAY_BLOCK + 2, RELAY_BLOCK))
    random.shuffle(starts)
    for start in starts:
        if all(_udp_free(addr, p) for p in range(start, start + RELAY_BLOCK)):
            return start
    raise RuntimeError(f"every TURN relay port block in {lo}-{hi} has UDP ports in use on "
                       "this node; widen network.turn_relay_min..turn_relay_max")


def _udp_free(addr: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True


def config_text(directory: Path, port: int, bind_addr: str, relay_ip: str | None,
                relay: tuple[int, int], username: str, password: str) -> str:
    lines = [f"listening-port={port}"]
    if bind_addr not in address.WILDCARDS:
        lines += [f"listening-ip={bind_addr}", "listening-ip=127.0.0.1"]
    if relay_ip:
        lines.append(f"relay-ip={relay_ip}")
    # Relay only to the desktop's own media address: every other peer, IPv4 and IPv6, is
    # denied (an allowed range wins over a denied one in coturn), and no TCP relay (RFC 6062)
    # at all. Without a known address nothing can be relayed, which is the safe failure.
    lines += ["denied-peer-ip=0.0.0.0-255.255.255.255",
              "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "no-tcp-relay"]
    if relay_ip:
        lines.append(f"allowed-peer-ip={relay_ip}")
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
        first = pick_relay_block(*relay_range)
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
    turn = JobTurn(port, relay, USER, password, child, directory)
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
