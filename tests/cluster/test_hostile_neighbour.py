"""Issue 19 on the dev cluster: a hostile second user on the same node.

The hostile user is a real second account (HPCDESK_DEV_USER2) running real programs on the
node (inside its network namespace, through devcluster.sh exec + runuser), with
fs.protected_regular=1: a port thief that listens where the agent might and logs every byte
it receives, squatters of display names, lock files and relay blocks, a foreign
/tmp/.X11-unix, junk on the push port, an idle `nc` as a fake viewer, a TURN client aiming
the desktop's relay at the cluster network.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import User
from tooling import require

from harness.devcluster import CONTROLLER_IP, DEVCLUSTER, NODE_IPS, SITE, VENV, node_exec, run

pytestmark = pytest.mark.cluster
TAG = os.environ.get("HPCDESK_TEST_NET_TAG", "h0")
# A port range of this test run alone (the tag's number), below the kernel's ephemeral range
# (32768-60999 by default): a node's own outgoing connections (and their TIME_WAIT) never
# hold one of these ports when the thief or the agent binds it.
BASE = 30000 + (int("".join(c for c in TAG if c.isdigit()) or "0") % 27) * 100

# The thief: listens on ports the agent may take, answers 503, logs every byte it receives.
# It takes (a) the ports named by claims it can read in /proc/net/unix (@hpcdesk/port-N:
# what the agent announced before this issue), (b) `pre` ports at once, and (c) with
# `on_victim`, every still free port of the range as soon as one of the victim's X servers
# appears (so it is there before the web UI binds); "swap" then gives back the ports it held
# before, so that the agent's next try finds one.
THIEF = textwrap.dedent("""
    import os, re, selectors, socket, ssl, sys, time
    log, lo, hi, victim, pre, on_victim = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                                          int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # any certificate: does the client check?
    tls.load_cert_chain(sys.argv[7], sys.argv[8])
    sel = selectors.DefaultSelector()
    held = {}
    out = open(log, "ab", buffering=0)
    def take(port):
        if port in held or not lo <= port <= hi:
            return
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", port)); s.listen(64)
        except OSError:
            s.close(); return
        s.setblocking(False)
        held[port] = s
        sel.register(s, selectors.EVENT_READ, "listen")
        out.write(f"TOOK {port}\\n".encode())
    def victim_has_x():
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                st = open(f"/proc/{pid}/status").read()
                comm = open(f"/proc/{pid}/comm").read().strip()
            except OSError:
                continue
            if comm == "Xorg" and re.search(rf"^Uid:\\s+{victim}\\s", st, re.M):
                return True
        return False
    for port in range(lo, lo + pre):
        take(port)
    open(log + ".ready", "w").close()
    triggered = False
    while True:
        for m in re.finditer(r"@hpcdesk/port-(\\d+)", open("/proc/net/unix").read()):
            take(int(m.group(1)))
        if on_victim != "0" and not triggered and victim_has_x():
            triggered = True
            before = set(held)
            for port in range(lo, hi + 1):
                take(port)
            if on_victim == "swap":  # give back what was held before: the agent's next try
                for port in before:
                    sel.unregister(held[port]); held.pop(port).close()
                    out.write(f"GAVE {port}\\n".encode())
        for key, _ in sel.select(0.01):
            if key.data == "listen":
                try:
                    conn, _ = key.fileobj.accept()
                except OSError:
                    continue
                conn.settimeout(1.0)
                data = b""
                try:
                    if conn.recv(1, socket.MSG_PEEK) == b"\\x16":  # a TLS ClientHello
                        conn = tls.wrap_socket(conn, server_side=True)
                        out.write(b"TLS\\n")
                except (OSError, ssl.SSLError):
                    conn.close(); continue
                try:
                    while b"\\r\\n\\r\\n" not in data and len(data) < 65536:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                out.write(b"GOT " + data + b"\\n")
                try:
                    conn.sendall(b"HTTP/1.1 503 Service Unavailable\\r\\nContent-Length: 0\\r\\n"
                                 b"Connection: close\\r\\n\\r\\n")
                except OSError:
                    pass
                conn.close()
""")

# Squatters of rows 2 and 3, in the node's network namespace (abstract names) and files.
SQUAT = textwrap.dedent("""
    import socket, sys, time, resource
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    held = []
    for n in range(20, 1000):          # every display name of the old range
        s = socket.socket(socket.AF_UNIX); s.bind(f"\\0hpcdesk/display-{n}"); held.append(s)
    for start in range(40000, 40000 + 1024 * 16, 16):   # 1,024 relay-block names
        s = socket.socket(socket.AF_UNIX); s.bind(f"\\0hpcdesk/turn-relay-{start}")
        held.append(s)
    open(sys.argv[1], "w").close()
    time.sleep(int(sys.argv[2]))
""")


def uid(name: str) -> int:
    return pwd.getpwnam(name).pw_uid


def wait_for(what: str, check: object, timeout: float = 120, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def as_user_on_node(node: str, user: str, *argv: str) -> list[str]:
    return ["bash", str(DEVCLUSTER), "exec", node, "runuser", "-u", user, "--", *argv]


@contextlib.contextmanager
def hostile(node: str, who: User, script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A program of the hostile user on `node`, ended (with everything it started) after."""
    proc = subprocess.Popen(as_user_on_node(node, who.name, str(VENV / "bin/python"), "-c",
                                            script, *args), text=True, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.fixture
def drop() -> Iterator[Path]:
    """A directory both users can write, for the hostile programs' logs (root's after)."""
    d = Path(f"/var/tmp/{TAG}-hostile-{os.getpid()}")
    d.mkdir(mode=0o1777, exist_ok=True)
    d.chmod(0o1777)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


def thief(node: str, who: User, log: Path, lo: int, hi: int, victim: str, pre: int,
          on_victim: bool | str) -> contextlib.AbstractContextManager[subprocess.Popen[str]]:
    """The port thief, with its own self-signed certificate for clients that speak TLS."""
    cert, key = log.with_suffix(".crt"), log.with_suffix(".key")
    made = run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                 "-subj", "/CN=thief", "-keyout", str(key), "-out", str(cert)])
    assert made.returncode == 0, made.stderr
    for path in (cert, key):
        path.chmod(0o644)
    return hostile(node, who, THIEF, str(log), str(lo), str(hi), str(uid(victim)), str(pre),
                   on_victim if isinstance(on_victim, str) else "1" if on_victim else "0",
                   str(cert), str(key))


def captured(log: Path) -> bytes:
    return log.read_bytes() if log.exists() else b""


def site_with(user: User, name: str, extra: str) -> Path:
    text = (Path(__file__).resolve().parents[2] / "site-configs/devcluster.yaml").read_text()
    path = user.home / f"{TAG}-{name}.yaml"
    path.write_text(text.rstrip() + "\n" + extra)
    path.chmod(0o644)
    return path


# ----------------------------------------------------------------------- row 1

@pytest.mark.reliability("H1 a neighbour takes the desktop's port first",
                         "no credential reaches it; another port, or a clear failure naming them")
def test_port_thief_gets_no_credential(user: User, second_user: User, drop: Path,
                                       protected_regular: None,
                                       cleanup_jobs: list[str]) -> None:
    """The thief takes the ports the agent may use before the web UI binds (the announced
    claim, or every free port of a two-port range once the victim's Xorg appears). Nothing
    the agent sends may reach it; the desktop fails with a reason naming the thief."""
    lo, hi = BASE, BASE + 1
    log = drop / "thief.log"
    with thief("gpu01", second_user, log, lo, hi, user.name, 0, on_victim=True):
        wait_for("the thief", lambda: Path(str(log) + ".ready").exists(), 60)
        proc = user.run("submit", *SITE, "-G", "0", "--json", "--set",
                        "scheduler.extra_args=['--nodelist=gpu01']", "--set",
                        f"network.port_min={lo}", "--set", f"network.port_max={hi}",
                        timeout=300)
        got = captured(log)
    assert b"TOOK" in got, "the thief never took a port: the test proves nothing"
    assert b"Authorization" not in got and b"Bearer" not in got, got[:2000]
    assert proc.returncode != 0, proc.stdout
    assert second_user.name in proc.stderr and "no credential was sent" in proc.stderr, \
        proc.stderr


@pytest.mark.reliability("H1 a neighbour takes the desktop's port first",
                         "no credential reaches it; another port, or a clear failure naming them")
def test_port_thief_costs_a_retry_on_another_port(user: User, second_user: User, drop: Path,
                                                  protected_regular: None,
                                                  cleanup_jobs: list[str]) -> None:
    """The thief holds the second port of a two-port range, so the agent picks the first;
    when the victim's Xorg appears it takes the first and gives back the second. The agent
    finds the first port held by someone else, sends nothing, and starts on the second."""
    lo, hi = BASE + 2, BASE + 3
    log = drop / "thief-swap.log"
    with thief("gpu01", second_user, log, hi, hi, user.name, 1, on_victim="swap") as _, \
            thief("gpu01", second_user, drop / "thief-lo.log", lo, lo, user.name, 0,
                  on_victim=True):
        wait_for("the thieves", lambda: Path(str(log) + ".ready").exists() and Path(
            str(drop / "thief-lo.log") + ".ready").exists(), 60)
        data = user.json("submit", *SITE, "-G", "0", "--set",
                         "scheduler.extra_args=['--nodelist=gpu01']", "--set",
                         f"network.port_min={lo}", "--set", f"network.port_max={hi}",
                         timeout=300)
        cleanup_jobs.append(str(data["session"]))
        got = captured(log) + captured(drop / "thief-lo.log")
    assert int(data["port"]) == hi, data
    assert b"TOOK %d" % lo in got and b"GAVE %d" % hi in got, got[:500]
    assert str(data["password"]).encode() not in got and b"Authorization" not in got
    agent_log = (user.sessions_root() / str(data["session"]) / "agent.log").read_text()
    assert f"port {lo} on this node is held by {second_user.name}" in agent_log


# ----------------------------------------------------------------------- row 2

X_START = textwrap.dedent("""
    import json, os, subprocess, sys
    from pathlib import Path
    from hpcdesk.node.xorg_conf import XorgSpec
    from hpcdesk.node.xserver import start_xorg, write_x_files
    work = Path(sys.argv[1])
    files = write_x_files(work, XorgSpec(width=1024, height=768, refresh=60, depth=24, dpi=96,
                                         driver="dummy", bus_id=None, video_port="DFP"))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work)}
    try:
        x = start_xorg("/usr/lib/xorg/Xorg", files, 96, env, work / "xorg.out", 60)
    except Exception as exc:
        print(json.dumps({"error": str(exc)[:2000]})); sys.exit(0)
    info = subprocess.run(["xdpyinfo"], env={**env, "DISPLAY": x.display,
                          "XAUTHORITY": str(files.xauthority)}, capture_output=True, text=True)
    x.child.proc.terminate(); x.child.proc.wait(10)
    print(json.dumps({"display": x.display, "xdpyinfo": info.returncode}))
""")

PRIVATE_TMP = textwrap.dedent("""
    set -eu
    mount -t tmpfs -o mode=1777 {tag}-tmp /tmp
    runuser -u "$B" -- mkdir -m 755 /tmp/.X11-unix
    runuser -u "$B" -- mkdir -m 755 /tmp/.ICE-unix
    mkdir -m 700 /tmp/work && chown "$A" /tmp/work
    runuser -u "$A" -- "$PY" -c "$X_START" /tmp/work
    echo "LOGBYTES $(du -sb /tmp/work | cut -f1)"
    runuser -u "$A" -- "$PY" -m hpcdesk.node.node_checks --json
""")


@pytest.mark.reliability("H2 another user made /tmp/.X11-unix (0755)",
                         "the X server starts anyway (abstract socket); doctor --node names "
                         "the owner; bounded logs")
def test_foreign_x11_unix_dir_blocks_nothing(user: User, second_user: User,
                                             protected_regular: None) -> None:
    """In a private /tmp on the node (so nobody else's desktops see it): the hostile user owns
    /tmp/.X11-unix and /tmp/.ICE-unix with mode 0755; the host runtime's Xorg still starts,
    a client connects, the logs stay small, and doctor --node reports both directories."""
    require("xdpyinfo", package="x11-utils")
    script = PRIVATE_TMP.replace("{tag}", TAG)
    proc = node_exec("gpu01", "env", f"A={user.name}", f"B={second_user.name}",
                     f"PY={VENV / 'bin/python'}", f"X_START={X_START}", "unshare", "--mount",
                     "--propagation", "private", "bash", "-c", script, timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    started = json.loads(lines[0])
    assert "error" not in started, started["error"]
    assert started["xdpyinfo"] == 0
    logbytes = int(next(ln for ln in lines if ln.startswith("LOGBYTES")).split()[1])
    assert logbytes < 16 << 20
    doctor = json.loads("\n".join(lines[lines.index(next(ln for ln in lines
                                                         if ln.startswith("LOGBYTES"))) + 1:]))
    found = {c["name"]: c for c in doctor["checks"]}
    for name in ("x11-unix-dir", "ice-unix-dir"):
        assert found[name]["status"] == "warn" and second_user.name in found[name]["detail"]


# ----------------------------------------------------------------------- row 3

CLAIM_DISPLAY = textwrap.dedent("""
    import json
    from hpcdesk.node import jobturn
    from hpcdesk.node.displays import DisplayLease
    lease = DisplayLease()
    print(json.dumps({"display": lease.acquire(), "relay": jobturn.__dict__.get(
        "pick_relay_block", lambda lo, hi: None)(40000, 40000 + 1024 * 16 - 1)}))
""")

LOCKS = textwrap.dedent("""
    set -eu
    mount -t tmpfs -o mode=1777 {tag}-tmp3 /tmp
    runuser -u "$B" -- sh -c 'for n in $(seq 20 999); do : > /tmp/.X$n-lock; done'
    runuser -u "$A" -- "$PY" -c "$CLAIM"
    runuser -u "$A" -- "$PY" -m hpcdesk.node.node_checks --json
""")


@pytest.mark.reliability("H3 980 lock files, 980 display names, 1,024 relay-block names",
                         "a retry at most: displays and relay ports are still found; "
                         "doctor --node reports the lock files")
def test_squatted_claims_block_nothing(user: User, second_user: User, drop: Path,
                                       protected_regular: None) -> None:
    ready = drop / "squat.ready"
    with hostile("gpu01", second_user, SQUAT, str(ready), "240"):
        wait_for("the squatter", ready.exists, 60)
        script = LOCKS.replace("{tag}", TAG)
        proc = node_exec("gpu01", "env", f"A={user.name}", f"B={second_user.name}",
                         f"PY={VENV / 'bin/python'}", f"CLAIM={CLAIM_DISPLAY}", "unshare",
                         "--mount", "--propagation", "private", "bash", "-c", script,
                         timeout=180)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    got = json.loads(lines[0])
    assert got["display"] >= 1000 or got["display"] < 20, got
    assert got["relay"] is not None and got["relay"] >= 40000, got
    doctor = json.loads("\n".join(lines[1:]))
    locks = {c["name"]: c for c in doctor["checks"]}["x-lock-files"]
    assert locks["status"] == "warn" and "980" in locks["detail"] and \
        second_user.name in locks["detail"], locks


# ----------------------------------------------------------------------- row 4

UCLIENT = textwrap.dedent("""
    set -u
    conf=$(cat "$CONF")
    user=$(printf '%s\\n' "$conf" | sed -n 's/^user=\\([^:]*\\):.*/\\1/p')
    pass=$(printf '%s\\n' "$conf" | sed -n 's/^user=[^:]*:\\(.*\\)$/\\1/p')
    port=$(printf '%s\\n' "$conf" | sed -n 's/^listening-port=//p')
    for peer in $PEERS; do
        timeout 20 turnutils_uclient -t -n 3 -m 1 -u "$user" -w "$pass" -p "$port" \\
            -e "$peer" -r "$PEER_PORT" "$NODE_IP" > "$OUT.$peer" 2>&1
        echo "$peer $?"
    done
""")


@pytest.mark.reliability("H4 a viewer's TURN credentials aimed at the cluster network",
                         "the in-job TURN refuses every peer but the desktop's own address")
def test_in_job_turn_relays_only_to_its_desktop(user: User, cleanup_jobs: list[str]) -> None:
    """With the in-job TURN's own valid credentials, an allocation towards the other node
    or the controller is refused, towards the desktop's own address it is relayed (real
    coturn, real turnutils_uclient/turnutils_peer)."""
    require("turnutils_uclient", "turnutils_peer", package="coturn")
    data = user.json("submit", *SITE, "-G", "0", "--set", "desktop.transport=webrtc",
                     "--set", "network.turn=job", "--set",
                     "scheduler.extra_args=['--nodelist=gpu01']", timeout=300)
    cleanup_jobs.append(str(data["session"]))
    node = json.loads((user.sessions_root() / str(data["session"]) / "node.json").read_text())
    conf = f"{node['workdir']}/turn/turnserver.conf"
    peer_port = str(BASE + 50)
    peers = []
    for name, ip in NODE_IPS.items():  # a UDP echo peer on each node's address
        peers.append(subprocess.Popen(["bash", str(DEVCLUSTER), "exec", name, "turnutils_peer",
                                       "-L", ip, "-p", peer_port], start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        for name in NODE_IPS:
            wait_for(f"turnutils_peer on {name}", lambda n=name: peer_port in node_exec(
                n, "ss", "-Hlun", f"sport = :{peer_port}").stdout, 30)
        controller = CONTROLLER_IP
        proc = node_exec("gpu01", "env", f"CONF={conf}", f"PEER_PORT={peer_port}",
                         f"OUT={node['workdir']}/uclient",
                         f"NODE_IP={NODE_IPS['gpu01']}",
                         f"PEERS={NODE_IPS['gpu01']} {NODE_IPS['gpu02']} {controller}",
                         "bash", "-c", UCLIENT, timeout=120)
    finally:
        for p in peers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
    results = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
    own = node_exec("gpu01", "cat", f"{node['workdir']}/uclient.{NODE_IPS['gpu01']}").stdout
    assert results[NODE_IPS["gpu01"]] == "0", (proc.stdout, own[-2000:])  # its own desktop
    assert results[NODE_IPS["gpu02"]] != "0", proc.stdout  # the other node: refused
    assert results[controller] != "0", proc.stdout  # the controller: refused


# ----------------------------------------------------------------------- rows 5-9

@pytest.mark.reliability("H5 junk on the push port while submit waits",
                         "no traceback; at most one summary line; the desktop is published")
def test_push_port_junk(user: User, second_user: User, cleanup_jobs: list[str]) -> None:
    """The hostile user finds the waiting client's port in /proc/net/tcp (listeners of the
    victim's uid) and sends a non-ASCII tag and 1,003 more bad lines."""
    before = {ln.split()[1] for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if ln.split()[3] == "0A"}
    submit = user.popen("submit", *SITE, "-G", "0", "--json")
    junk = ('{"e": "{}", "m": "\\u00e9\\u00e9"}\n' + "garbage\n" * 1003)
    sender = textwrap.dedent("""
        import socket, sys
        victim, before, junk = sys.argv[1], set(sys.argv[2].split(",")), sys.argv[3]
        sent = 0
        for line in open("/proc/net/tcp").read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[7] == victim and f[1] not in before:
                port = int(f[1].split(":")[1], 16)
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                        s.sendall(junk.encode())
                    sent += 1
                except OSError:
                    pass
        print(sent)
    """)
    sent = 0
    try:
        deadline = time.monotonic() + 60
        while not sent and time.monotonic() < deadline:
            out = run(["runuser", "-u", second_user.name, "--", str(VENV / "bin/python"), "-c",
                        sender, str(uid(user.name)), ",".join(before), junk]).stdout
            sent = int(out.strip() or 0)
            time.sleep(0.2)
        stdout, stderr = submit.communicate(timeout=300)
    finally:
        if submit.poll() is None:
            submit.kill()
    assert sent, "the junk found no listener of the waiting submit"
    assert submit.returncode == 0, stderr
    data = json.loads(stdout)
    cleanup_jobs.append(str(data["session"]))
    assert "Traceback" not in stderr and "TypeError" not in stderr, stderr
    assert sum("push event" in ln for ln in stderr.splitlines()) <= 1, stderr


@pytest.mark.reliability("H6 another user pre-created the session root",
                         "refused with a clear error before anything runs")
def test_foreign_session_root_is_refused(user: User, second_user: User, drop: Path) -> None:
    root = drop / "planted-sessions"
    run(["runuser", "-u", second_user.name, "--", "mkdir", "-m", "777", str(root)])
    proc = user.run("submit", *SITE, "-G", "0", "--set", f"session_root={root}", timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "not to you" in proc.stderr or "writable by others" in proc.stderr, proc.stderr
    assert not any(root.iterdir())  # nothing of the victim's was written there
    stale = run(["squeue", "-h", "-u", user.name, "-o", "%i %o"]).stdout
    assert str(root) not in stale


@pytest.mark.reliability("H7 an idle nc to the web port",
                         "not a viewer: the idle timeout still ends the desktop")
def test_idle_nc_is_not_a_viewer(user: User, second_user: User,
                                 cleanup_jobs: list[str]) -> None:
    path = site_with(user, "idle", "  idle: 15\n")  # under the file's last key, timeouts
    data = user.json("submit", "--site", str(path), "-G", "0", timeout=300)
    sid, job = str(data["session"]), str(data["job_id"])
    cleanup_jobs.append(sid)
    # Connected, never authenticated: it asks for the page without credentials every few
    # seconds on one keep-alive connection (401 each time), so the server keeps it open.
    hold = textwrap.dedent("""
        import socket, ssl, sys, time
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        first = True
        while True:
            try:
                s = ctx.wrap_socket(socket.create_connection((sys.argv[1], int(sys.argv[2]))))
                if first:
                    print("connected", flush=True)
                    first = False
                while True:
                    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                    if not s.recv(65536):
                        break
                    time.sleep(3)
            except OSError:
                time.sleep(0.5)
    """)
    nc = subprocess.Popen(as_user_on_node(str(data["node"]), second_user.name,
                                          str(VENV / "bin/python"), "-c", hold,
                                          str(data["host"]), str(data["port"])),
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert nc.stdout is not None and nc.stdout.readline().strip() == "connected"
        wait_for("the idle desktop to end despite the idle connection",
                 lambda: run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "",
                 timeout=150, every=1)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(nc.pid, signal.SIGKILL)
        nc.wait(10)
    st = user.json("status", sid, "--site", str(path))
    assert st["state"] == "idle", st


@pytest.mark.reliability("H8 a world-readable TURN secret",
                         "refused before submitting; the hint says root:GROUP, mode 0640")
def test_world_readable_turn_secret_is_refused(user: User, drop: Path,
                                               cleanup_jobs: list[str]) -> None:
    """Every account could read it and mint credentials for the site's TURN server."""
    secret = drop / "turn-secret"
    secret.write_text("site-secret\n")
    secret.chmod(0o644)
    site = site_with(user, "turn", f"turn:\n  host: 10.77.0.1\n  secret_file: {secret}\n")
    proc = user.run("submit", "--site", str(site), "-G", "0", "--json", "--set",
                    "desktop.transport=webrtc", "--set", "network.connect=turn", timeout=300)
    if proc.returncode == 0:
        cleanup_jobs.append(str(json.loads(proc.stdout)["session"]))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "world-readable" in proc.stderr and "chmod 0640" in proc.stderr, proc.stderr
    assert "0644" not in proc.stderr.split("hint", 1)[-1]


@pytest.mark.reliability("H9 node agent SIGKILLed",
                         "the job's own cleanup removes the work directory and connection.json")
def test_sigkilled_agent_leaves_no_secret(user: User, cleanup_jobs: list[str]) -> None:
    data = user.json("submit", *SITE, "-G", "0", timeout=300)
    sid = str(data["session"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    node = json.loads((sdir / "node.json").read_text())
    work = Path(node["workdir"])
    assert node_exec(str(data["node"]), "test", "-d", str(work)).returncode == 0
    assert (sdir / "connection.json").exists()
    os.kill(int(node["agent_pid"]), signal.SIGKILL)
    wait_for("connection.json to go", lambda: not (sdir / "connection.json").exists(), 60)
    wait_for("the work directory to go", lambda: node_exec(
        str(data["node"]), "test", "-e", str(work)).returncode != 0, 60)
    st = user.json("status", sid, *SITE)
    assert st["state"] == "failed" and "killed" in st["detail"], st


# ----------------------------------------------------------------------- all at once

@pytest.mark.reliability("H0 a hostile neighbour while two desktops start",
                         "both start; the thief captures no secret; nothing blocked or readable")
def test_two_desktops_start_next_to_a_hostile_neighbour(user: User, second_user: User,
                                                        drop: Path, protected_regular: None,
                                                        cleanup_jobs: list[str]) -> None:
    """Rows 1-4 at once on gpu01 while two desktops of the first user start there: the
    thief holds most ports of the range and takes every claimed one, the squatter holds
    980 display and 1,024 relay-block names; both desktops start, the thief logs no secret,
    and the hostile user can read nothing of the first user's sessions or work dirs."""
    lo, hi = BASE + 10, BASE + 39
    log = drop / "thief-all.log"
    ready = drop / "squat-all.ready"
    pin = ("--set", "scheduler.extra_args=['--nodelist=gpu01']", "--set",
           f"network.port_min={lo}", "--set", f"network.port_max={hi}", "-G", "0")
    with thief("gpu01", second_user, log, lo, hi, user.name, 20, on_victim=False), \
            hostile("gpu01", second_user, SQUAT, str(ready), "600"):
        wait_for("the thief", lambda: Path(str(log) + ".ready").exists(), 60)
        wait_for("the squatter", ready.exists, 60)
        with ThreadPoolExecutor(2) as pool:
            runs = list(pool.map(lambda _: user.run("submit", *SITE, *pin, "--json",
                                                    timeout=400), range(2)))
        got = captured(log)
        for proc in runs:
            assert proc.returncode == 0, proc.stderr
        conns = [json.loads(p.stdout) for p in runs]
        for c in conns:
            cleanup_jobs.append(str(c["session"]))
        assert len({c["port"] for c in conns}) == 2
        assert all(lo + 20 <= int(c["port"]) <= hi for c in conns), conns
        for c in conns:
            work = json.loads((user.sessions_root() / str(c["session"]) / "node.json")
                              .read_text())["workdir"]
            for target in (str(user.sessions_root() / str(c["session"]) / "connection.json"),
                           work):
                peek = node_exec("gpu01", "runuser", "-u", second_user.name, "--", "ls",
                                 target)
                assert peek.returncode != 0, f"{second_user.name} can read {target}"
    assert b"TOOK" in got
    for c in conns:
        for secret in (c.get("password"), c.get("token")):
            if secret:
                assert str(secret).encode() not in got
    assert b"Authorization" not in got and b"Bearer" not in got, got[:2000]
