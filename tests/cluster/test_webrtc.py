"""Issue 9 acceptance on the dev cluster: WebRTC under the site's control.

Real parts only: Debian's coturn as the site's TURN server (in the root namespace, the
"login/DMZ" side, on 10.79.2.1), turnutils_uclient/turnutils_peer, Selkies on the nodes, and
headless Chromium in a "laptop" network namespace (10.79.2.2) that reaches the TURN server but
not the nodes. The laptop gets the web page through a TCP-only bridge (socat over a Unix
socket, the same port number at both ends, like `hpcdesk tunnel`); WebRTC media can reach the
node only through a TURN server.
"""

from __future__ import annotations

import base64
import contextlib
import grp
import hashlib
import hmac
import json
import os
import pwd
import random
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import User, colour_fraction, node_user_pids, place_window, write_site
from tooling import require

from harness import browser
from harness.devcluster import CONTROLLER_IP, DEVCLUSTER, NODE_IPS, USER, node_exec, run
from harness.fake_turn_rest import fake_turn_rest, use_auth_secret
from harness.ports import free_port

pytestmark = pytest.mark.cluster
LAPTOP_NS = "h9-laptop"
VETH = "h9-lap"          # root end; the laptop end is h9-lap-n
TURN_IP = "10.79.2.1"    # the TURN server's address (root namespace), reachable from both
LAPTOP_IP = "10.79.2.2"
REALM = "hpcdesk.test"
GREEN = (0x13, 0xA8, 0x6B)
PUBLIC_NAMES = ("openrelay", "metered.ca", "google", "cloudflare", "stun.l.", "19302")


# ------------------------------------------------------------------------- the network

@pytest.fixture(scope="module")
def laptop() -> Iterator[str]:
    """The laptop namespace: a veth to the root namespace, default route via the TURN side."""
    require("ip", "nsenter", package="iproute2 util-linux")
    _teardown_laptop()
    steps = [
        ["ip", "netns", "add", LAPTOP_NS],
        ["ip", "link", "add", VETH, "type", "veth", "peer", "name", f"{VETH}-n"],
        ["ip", "link", "set", f"{VETH}-n", "netns", LAPTOP_NS],
        ["ip", "addr", "add", f"{TURN_IP}/24", "dev", VETH],
        ["ip", "link", "set", VETH, "up"],
        ["ip", "-n", LAPTOP_NS, "addr", "add", f"{LAPTOP_IP}/24", "dev", f"{VETH}-n"],
        ["ip", "-n", LAPTOP_NS, "link", "set", f"{VETH}-n", "up"],
        ["ip", "-n", LAPTOP_NS, "link", "set", "lo", "up"],
        ["ip", "-n", LAPTOP_NS, "route", "add", "default", "via", TURN_IP],
    ]
    try:
        for step in steps:
            r = run(step)
            assert r.returncode == 0, (step, r.stderr)
        yield LAPTOP_NS
    finally:
        _teardown_laptop()


def _teardown_laptop() -> None:
    run(["ip", "netns", "del", LAPTOP_NS])
    run(["ip", "link", "del", VETH])


def _connects(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except OSError:
        return False
    return True


def in_laptop(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run(["nsenter", f"--net=/run/netns/{LAPTOP_NS}", *argv], timeout=timeout)


def laptop_connects(host: str, port: int) -> bool:
    probe = ("import socket,sys\ntry:\n socket.create_connection((sys.argv[1], int(sys.argv[2])),"
             " timeout=3).close()\nexcept OSError:\n sys.exit(1)")
    return in_laptop("python3", "-c", probe, host, str(port)).returncode == 0


@contextlib.contextmanager
def tcp_bridge(ports: list[int], node_ip: str) -> Iterator[None]:
    """The laptop's 127.0.0.1:PORT -> the node's PORT, TCP only (like an SSH tunnel)."""
    require("socat", package="socat")
    tmp = Path(tempfile.mkdtemp(prefix="h9-bridge-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            sock = tmp / f"{port}.sock"
            procs.append(subprocess.Popen(
                ["socat", f"UNIX-LISTEN:{sock},fork,mode=600", f"TCP:{node_ip}:{port}"],
                stderr=subprocess.DEVNULL, start_new_session=True))
            _wait(lambda s=sock: s.exists(), 10, f"bridge socket {sock}")
            procs.append(subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{LAPTOP_NS}", "socat",
                 f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork", f"UNIX-CONNECT:{sock}"],
                stderr=subprocess.DEVNULL, start_new_session=True))
            _wait(lambda p=port: laptop_connects("127.0.0.1", p), 10, f"bridge port {port}")
        yield
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def view_from_laptop(laptop: str, conn: dict[str, Any], url: str, ports: list[int],
                     node_ip: str, shot: Path) -> tuple[bool, list[dict[str, Any]] | None]:
    """Chromium in the laptop namespace, through a TCP bridge of `ports`, logs in and watches
    for the placed green window; (seen, the page's RTCPeerConnection configurations)."""
    with tcp_bridge(ports, node_ip), browser.Chromium(laptop) as tools:
        tools.open(url, init_script=browser.RTC_SPY,
                   login=(str(conn["user"]), str(conn["password"])))
        seen = tools.wait_for(shot, lambda p: colour_fraction(p, GREEN) > 0.10)
        return seen, tools.peer_configs()


def _wait(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


# ----------------------------------------------------------------- the site's TURN server

class Coturn:
    def __init__(self, directory: Path, auth: list[str], ip: str = TURN_IP) -> None:
        require("turnserver", "turnutils_uclient", "turnutils_peer", package="coturn")
        self.dir = directory
        self.dir.mkdir(mode=0o700)
        shutil.chown(self.dir, "nobody")
        self.ip = ip
        self.port = free_port(ip)
        relay = random.randrange(50000, 59000, 16)
        conf = self.dir / "turnserver.conf"
        conf.write_text("\n".join([
            f"listening-ip={ip}", f"listening-port={self.port}", f"relay-ip={ip}",
            f"min-port={relay}", f"max-port={relay + 15}", f"realm={REALM}", "fingerprint",
            "no-cli", "no-tls", "no-dtls", "verbose", f"log-file={self.dir}/turn.log",
            "simple-log", f"pidfile={self.dir}/turn.pid", f"userdb={self.dir}/turndb", *auth,
        ]) + "\n")
        conf.chmod(0o600)
        shutil.chown(conf, "nobody")
        self.proc = subprocess.Popen(["runuser", "-u", "nobody", "--", "turnserver", "-c",
                                      str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(self._listening, 20, "coturn")

    def _listening(self) -> bool:
        assert self.proc.poll() is None, "coturn exited: " + self.log()
        with contextlib.suppress(OSError):
            socket.create_connection((self.ip, self.port), timeout=1).close()
            return True
        return False

    def log(self) -> str:
        path = self.dir / "turn.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def turn_peer(laptop: str) -> Iterator[int]:
    """turnutils_peer in the laptop namespace: the far end of uclient's relayed traffic."""
    port = random.randrange(20000, 30000)
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{laptop}", "turnutils_peer", "-L",
                             LAPTOP_IP, "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _wait(lambda: str(port) in in_laptop("ss", "-Hlun", f"sport = :{port}").stdout, 10,
          "turnutils_peer")
    yield port
    os.killpg(proc.pid, 15)
    proc.wait(10)


def uclient(server: Coturn, user: str, password: str, peer_port: int,
            tcp: bool = False) -> subprocess.CompletedProcess[str]:
    argv = ["turnutils_uclient", "-p", str(server.port), "-u", user, "-w", password,
            "-e", LAPTOP_IP, "-r", str(peer_port), "-n", "5", *(["-t"] if tcp else []), TURN_IP]
    return run(argv, timeout=90)


def secret_file(site_dir: Path, name: str, content: str, mode: int = 0o640) -> Path:
    """A site secret as the README asks for it: root's, readable by the users' group only
    (a world-readable one is refused)."""
    path = site_dir / name
    path.write_text(content + "\n")
    path.chmod(mode)
    shutil.chown(path, "root", grp.getgrgid(pwd.getpwnam(USER).pw_gid).gr_name)
    return path


# ------------------------------------------------------------------------ HTTP helpers

def http(url: str, auth: tuple[str, str] | None, data: bytes | None = None) -> tuple[int, str]:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the session's self-signed certificate
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")


def api_turn(conn: dict[str, Any]) -> dict[str, Any]:
    """The authenticated /api/turn of a webrtc desktop (503 while its WebRTC side starts)."""
    auth = (str(conn["user"]), str(conn["password"]))
    deadline = time.monotonic() + 60
    while True:
        status, body = http(f"{conn['url']}api/turn", auth)
        if status == 200:
            return dict(json.loads(body))
        assert status in (409, 503) and time.monotonic() < deadline, (status, body)
        time.sleep(0.5)


def ice_urls(doc: Any) -> list[str]:
    urls: list[str] = []
    for server in (doc or {}).get("iceServers", []) or []:
        got = server.get("urls", [])
        urls += [got] if isinstance(got, str) else list(got)
    return urls


def submit(user: User, site: Path, *extra: str) -> dict[str, Any]:
    data = user.json("submit", "--site", str(site), *extra)
    assert isinstance(data, dict) and data["state"] == "ready", data
    return data


def node_state(user: User, conn: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads((user.sessions_root() / str(conn["session"]) / "node.json")
                           .read_text()))


def rtc_file(user: User, conn: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """('owner mode', content) of the agent's rtc file, read inside the node's namespaces."""
    path = f"{node_state(user, conn)['workdir']}/rtc/rtc.json"
    st = node_exec(str(conn["node"]), "stat", "-c", "%U %a", path)
    assert st.returncode == 0, st.stderr
    body = node_exec(str(conn["node"]), "cat", path)
    return st.stdout.strip(), dict(json.loads(body.stdout))


def cancel(user: User, site: Path, conn: dict[str, Any]) -> None:
    user.run("cancel", str(conn["session"]), "--site", str(site), timeout=90)
    deadline = time.monotonic() + 30
    while node_user_pids(str(conn["node"]), user.name) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert node_user_pids(str(conn["node"]), user.name) == []


# --------------------------------------------------------------------------- the tests

def test_laptop_reaches_the_turn_server_but_not_the_node(laptop: str, site_dir: Path) -> None:
    """Proved first: from the laptop, only TURN_IP answers; the nodes do not."""
    server = Coturn(site_dir / "turn-probe", ["lt-cred-mech", "user=u:p"])
    try:
        assert laptop_connects(TURN_IP, server.port)
        for node, ip in NODE_IPS.items():
            # A listener inside the node's namespace: this side connects, the laptop cannot.
            port = random.randrange(30000, 40000)
            listen = subprocess.Popen(
                ["bash", str(DEVCLUSTER), "exec", node, "python3", "-c",
                 "import socket,sys,time\ns=socket.create_server((sys.argv[1], int(sys.argv[2])))"
                 "\ntime.sleep(60)", ip, str(port)], start_new_session=True)
            try:
                _wait(lambda i=ip, p=port: _connects(i, p), 20, f"a listener on {ip}")
                assert not laptop_connects(ip, port), f"the laptop reaches the node {ip}"
            finally:
                os.killpg(listen.pid, 15)
                listen.wait(10)
        # Each relay test also checks the desktop's own web port: open from here, not from
        # the laptop.
    finally:
        server.stop()


def test_no_public_relay_websockets(user: User, site_dir: Path, tmp_path: Path,
                                    cleanup_jobs: list[str]) -> None:
    site = write_site(site_dir, "plain")
    conn = submit(user, site)
    cleanup_jobs.append(str(conn["session"]))
    assert conn["transport"] == "websockets" and conn["turn_port"] is None
    auth = (str(conn["user"]), str(conn["password"]))
    owner_mode, doc = rtc_file(user, conn)
    assert owner_mode == f"{user.name} 600"
    assert doc["iceServers"] == []
    # Selkies serves no WebRTC config in websockets mode, and the UI cannot switch to webrtc.
    status, body = http(f"{conn['url']}api/turn", auth)
    assert status == 409 and not any(n in body for n in PUBLIC_NAMES), (status, body)
    status, body = http(f"{conn['url']}api/status", auth)
    assert status == 200 and json.loads(body)["enable_dual_mode"] is False
    status, body = http(f"{conn['url']}api/switch", auth, json.dumps({"mode": "webrtc"}).encode())
    assert status == 403, (status, body)
    place_window(user, str(conn["session"]))
    with browser.Chromium() as tools:
        tools.open(str(conn["url"]), init_script=browser.RTC_SPY, login=auth)
        seen = tools.wait_for(tmp_path / "ws.png", lambda p: colour_fraction(p, GREEN) > 0.10)
        configs = tools.peer_configs()
    assert seen, "the desktop is not visible in the browser"
    assert configs is not None
    assert all(ice_urls(c) == [] for c in configs), configs


def test_no_public_relay_webrtc_without_turn(user: User, site_dir: Path, tmp_path: Path,
                                             cleanup_jobs: list[str]) -> None:
    site = write_site(site_dir, "webrtc-direct", desktop={"transport": "webrtc"})
    conn = submit(user, site)
    cleanup_jobs.append(str(conn["session"]))
    assert conn["transport"] == "webrtc" and conn["turn_port"] is None
    doc = api_turn(conn)
    assert ice_urls(doc) == [] and doc["iceTransportPolicy"] == "all", doc
    auth = (str(conn["user"]), str(conn["password"]))
    # Selkies dials itself on localhost in webrtc mode: the port answers there too.
    port = int(conn["port"])
    loop = node_exec(str(conn["node"]), "python3", "-c",
                     f"import socket; socket.create_connection(('127.0.0.1', {port}), 5)")
    assert loop.returncode == 0, loop.stderr
    status, body = http(f"{conn['url']}api/status", auth)
    # webrtc is configured: switching transports is allowed
    assert status == 200 and json.loads(body)["enable_dual_mode"] is True
    place_window(user, str(conn["session"]))
    with browser.Chromium() as tools:
        tools.open(str(conn["url"]), init_script=browser.RTC_SPY, login=auth)
        seen = tools.wait_for(tmp_path / "rtc.png", lambda p: colour_fraction(p, GREEN) > 0.10)
        configs = tools.peer_configs()
    assert seen, "the desktop is not visible over direct WebRTC"
    assert configs, "the page made no RTCPeerConnection in webrtc mode"
    assert all(ice_urls(c) == [] for c in configs), configs


def test_shared_secret_turn_auth_and_no_leak(user: User, site_dir: Path, turn_peer: int,
                                             cleanup_jobs: list[str]) -> None:
    secret = "h9-" + base64.b32encode(os.urandom(15)).decode()
    server = Coturn(site_dir / "turn-secret", ["use-auth-secret",
                                               f"static-auth-secret={secret}"])
    try:
        path = secret_file(site_dir, "turn-secret.txt", secret)
        site = write_site(site_dir, "secret", desktop={"transport": "webrtc"},
                          network={"connect": "turn"},
                          turn={"host": TURN_IP, "port": server.port, "secret_file": str(path)})
        conn = submit(user, site)
        cleanup_jobs.append(str(conn["session"]))
        doc = api_turn(conn)
        (entry,) = doc["iceServers"]
        assert entry["urls"] == [f"turn:{TURN_IP}:{server.port}?transport=udp"]
        name, password = str(entry["username"]), str(entry["credential"])
        expiry = int(name.split(":")[0])
        assert expiry >= time.time() + 3600 - 120  # covers the devcluster's 1:00:00 limit
        ok = uclient(server, name, password, turn_peer)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        assert uclient(server, name, password[:-4] + "AAA=", turn_peer).returncode != 0
        expired = f"{int(time.time()) - 60}:{user.name}"
        expired_pw = base64.b64encode(hmac.new(secret.encode(), expired.encode(),
                                               hashlib.sha1).digest()).decode()
        assert uclient(server, expired, expired_pw, turn_peer).returncode != 0
        assert "401" in server.log()
        _assert_secret_nowhere(user, conn, secret)
    finally:
        server.stop()


def _assert_secret_nowhere(user: User, conn: dict[str, Any], secret: str) -> None:
    uid = int(run(["id", "-u", user.name]).stdout)
    checked = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            for part in ("environ", "cmdline"):
                assert secret.encode() not in Path(f"/proc/{entry}/{part}").read_bytes(), entry
            checked += 1
    assert checked >= 3, "no process of the user's job was found to check"
    sdir = user.sessions_root() / str(conn["session"])
    for f in [*sdir.iterdir(), *Path("/var/log/hpcdesk-devcluster").glob("*")]:
        if f.is_file():
            assert secret not in f.read_text(errors="replace"), f
    workdir = node_state(user, conn)["workdir"]
    grep = node_exec(str(conn["node"]), "grep", "-rl", secret, workdir)
    assert grep.returncode == 1 and grep.stdout == "", grep.stdout  # 1: no match
    job = json.loads((sdir / "session.json").read_text())["job_id"]
    assert secret not in run(["scontrol", "show", "job", "-dd", str(job)]).stdout


def test_long_term_turn_auth(user: User, site_dir: Path, turn_peer: int,
                             cleanup_jobs: list[str]) -> None:
    password = base64.b32encode(os.urandom(10)).decode()
    server = Coturn(site_dir / "turn-lt", ["lt-cred-mech", f"user=desk:{password}"])
    try:
        path = secret_file(site_dir, "turn-users.txt", f"desk:{password}", mode=0o640)
        shutil.chown(path, group=user.name)
        site = write_site(site_dir, "longterm", desktop={"transport": "webrtc"},
                          network={"connect": "turn"},
                          turn={"host": TURN_IP, "port": server.port, "protocol": "tcp",
                                "credentials_file": str(path)})
        conn = submit(user, site)
        cleanup_jobs.append(str(conn["session"]))
        (entry,) = api_turn(conn)["iceServers"]
        assert entry["urls"] == [f"turn:{TURN_IP}:{server.port}?transport=tcp"]
        assert (entry["username"], entry["credential"]) == ("desk", password)
        ok = uclient(server, "desk", password, turn_peer, tcp=True)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        assert uclient(server, "desk", "wrong" + password, turn_peer, tcp=True).returncode != 0
    finally:
        server.stop()


def test_rest_uri_turn_auth(user: User, site_dir: Path, turn_peer: int,
                            cleanup_jobs: list[str]) -> None:
    secret = "h9-" + base64.b32encode(os.urandom(15)).decode()
    server = Coturn(site_dir / "turn-rest", ["use-auth-secret", f"static-auth-secret={secret}"])
    turn_url = f"turn:{TURN_IP}:{server.port}?transport=udp"
    try:
        with fake_turn_rest(use_auth_secret(secret, [turn_url]), CONTROLLER_IP) as (uri, asked):
            site = write_site(site_dir, "rest", desktop={"transport": "webrtc"},
                              network={"connect": "turn"}, turn={"rest_uri": uri})
            conn = submit(user, site)
            cleanup_jobs.append(str(conn["session"]))
            assert [a.username for a in asked] == [user.name]  # once, by the node, for this user
            (entry,) = api_turn(conn)["iceServers"]
        # Exactly what the service answered: no STUN added by anyone.
        assert entry["urls"] == [turn_url]
        ok = uclient(server, str(entry["username"]), str(entry["credential"]), turn_peer)
        assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
        bad = uclient(server, str(entry["username"]), "x" + str(entry["credential"]), turn_peer)
        assert bad.returncode != 0
    finally:
        server.stop()


@pytest.mark.parametrize(("setup", "key"), [
    ("world-writable", "turn.secret_file"),
    ("missing", "turn.secret_file"),
    ("two-methods", "turn.credentials_file"),
])
def test_bad_turn_config_is_exit_2(user: User, site_dir: Path, setup: str, key: str) -> None:
    path = secret_file(site_dir, f"bad-{setup}", "x", mode=0o666 if setup == "world-writable"
                       else 0o644)
    path.chmod(0o666 if setup == "world-writable" else 0o644)  # umask-proof
    turn: dict[str, Any] = {"host": TURN_IP, "secret_file": str(path)}
    if setup == "missing":
        turn["secret_file"] = str(site_dir / "no-such-file")
    if setup == "two-methods":
        turn["credentials_file"] = str(path)
    site = write_site(site_dir, f"bad-{setup}", desktop={"transport": "webrtc"},
                      network={"connect": "turn"}, turn=turn)
    before = set(user.sessions_root().iterdir())
    proc = user.run("submit", "--site", str(site), timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert f"{site}: {key}:" in proc.stderr and "Traceback" not in proc.stderr
    assert set(user.sessions_root().iterdir()) == before


def test_webrtc_relayed_through_the_site_turn(user: User, laptop: str, site_dir: Path,
                                              tmp_path: Path, cleanup_jobs: list[str]) -> None:
    secret = "h9-" + base64.b32encode(os.urandom(15)).decode()
    server = Coturn(site_dir / "turn-relay", ["use-auth-secret", f"static-auth-secret={secret}"])
    try:
        path = secret_file(site_dir, "turn-relay-secret.txt", secret)
        site = write_site(site_dir, "relay", desktop={"transport": "webrtc"},
                          network={"connect": "turn"},
                          turn={"host": TURN_IP, "port": server.port, "protocol": "tcp",
                                "secret_file": str(path), "ice_transport_policy": "relay"})
        conn = submit(user, site)
        cleanup_jobs.append(str(conn["session"]))
        assert api_turn(conn)["iceTransportPolicy"] == "relay"
        port, node_ip = int(conn["port"]), str(conn["host"])
        assert not laptop_connects(node_ip, port), "the laptop must not reach the node"
        place_window(user, str(conn["session"]))
        url = f"https://127.0.0.1:{port}/"
        seen, configs = view_from_laptop(laptop, conn, url, [port], node_ip,
                                         tmp_path / "relay.png")
        assert seen, f"the desktop is not visible through TURN ({tmp_path}): {configs}"
        assert configs and all(c["iceTransportPolicy"] == "relay" for c in configs), configs
        assert all(u.startswith(f"turn:{TURN_IP}:") for c in configs for u in ice_urls(c))
        # The browser's TCP connection to coturn closed with the browser: its usage is logged.
        _wait(lambda: _relayed_bytes(server.log()) > 10_000, 30, "coturn's usage line")
    finally:
        (tmp_path / "coturn.log").write_text(server.log())  # kept with the screenshots
        server.stop()


def _relayed_bytes(log: str) -> int:
    """The most bytes one TURN session relayed from its peer (coturn's 'peer usage' lines)."""
    best = 0
    for line in log.splitlines():
        if "peer usage:" in line:
            fields = dict(f.split("=", 1) for f in line.split("peer usage:")[1].replace(",", " ")
                          .split() if "=" in f)
            best = max(best, int(fields.get("rb", "0")))
    return best


def test_webrtc_through_the_in_job_turn_over_tcp_only(user: User, laptop: str, site_dir: Path,
                                                      tmp_path: Path,
                                                      cleanup_jobs: list[str]) -> None:
    site = write_site(site_dir, "jobturn", desktop={"transport": "webrtc"},
                      network={"connect": "tunnel"}, turn={"ice_transport_policy": "relay"})
    conn = submit(user, site)
    cleanup_jobs.append(str(conn["session"]))
    turn_port, port, node_ip = int(conn["turn_port"]), int(conn["port"]), str(conn["host"])
    doc = api_turn(conn)
    assert doc["iceTransportPolicy"] == "relay"
    assert ice_urls(doc) == [f"turn:127.0.0.1:{turn_port}?transport=tcp"]
    state = node_state(user, conn)
    turn_dir = f"{state['workdir']}/turn"
    pids = node_user_pids(str(conn["node"]), user.name)
    coturn = [p for p in pids if "turnserver" in p]
    assert len(coturn) == 1 and "-c" in coturn[0], pids
    listening = node_exec(str(conn["node"]), "ss", "-Hltn", f"sport = :{turn_port}")
    assert f"{node_ip}:{turn_port}" in listening.stdout and f"127.0.0.1:{turn_port}" in \
        listening.stdout, listening.stdout
    udp = node_exec(str(conn["node"]), "ss", "-Hlun", f"sport = :{turn_port}")
    assert udp.stdout.strip() == "", "the in-job TURN must listen on TCP only"
    conf = node_exec(str(conn["node"]), "stat", "-c", "%U %a", f"{turn_dir}/turnserver.conf")
    assert conf.stdout.strip() == f"{user.name} 600"
    assert node_exec(str(conn["node"]), "test", "-s", f"{turn_dir}/turnserver.pid").returncode == 0
    assert not laptop_connects(node_ip, port)
    place_window(user, str(conn["session"]))
    url = f"https://127.0.0.1:{port}/"
    seen, configs = view_from_laptop(laptop, conn, url, [port, turn_port], node_ip,
                                     tmp_path / "jobturn.png")
    assert seen, f"the desktop is not visible through the in-job TURN ({tmp_path})"
    assert configs and all(c["iceTransportPolicy"] == "relay" for c in configs), configs

    def turn_log() -> str:
        return node_exec(str(conn["node"]), "cat", f"{turn_dir}/turnserver.log").stdout

    _wait(lambda: _relayed_bytes(turn_log()) > 10_000, 30, "the in-job TURN's usage line")
    cancel(user, site, conn)  # the TURN server goes with the desktop, and its directory
    assert node_exec(str(conn["node"]), "test", "-e", turn_dir).returncode != 0


def test_doctor_allocates_on_the_site_turn(user: User, laptop: str, site_dir: Path) -> None:
    secret = "h9-" + base64.b32encode(os.urandom(15)).decode()
    server = Coturn(site_dir / "turn-doctor", ["use-auth-secret", f"static-auth-secret={secret}"])
    try:
        good = secret_file(site_dir, "doctor-secret.txt", secret)
        bad = secret_file(site_dir, "doctor-wrong.txt", "not-" + secret)
        for path, want in ((good, "ok"), (bad, "fail")):
            site = write_site(site_dir, f"doctor-{want}", turn={
                "host": TURN_IP, "port": server.port, "protocol": "tcp",
                "secret_file": str(path)})
            proc = user.run("doctor", "--site", str(site), "--json", timeout=120)
            checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
            turn = checks["TURN server"]
            assert turn["status"] == want, turn
            if want == "ok":
                assert "allocation granted" in turn["detail"] and " ms" in turn["detail"]
            else:
                assert "401" in turn["detail"]
            assert secret not in proc.stdout + proc.stderr
    finally:
        server.stop()
