"""Harness for tests against the real dev cluster (tests/cluster/devcluster.sh).

The tests run as root (like CI); every hpcdesk command runs as the unprivileged dev user,
from the shared virtual environment, into which this harness installs the wheel built from
the checkout under test (so the nodes run exactly this code).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.devcluster import (
    DEVCLUSTER,
    REPO,
    SITE,
    SITE_NAME,
    USER,
    USER2,
    VENV,
    as_user,
    home,
    node_exec,
    on_display,
    run,
)

CTLD_PIDFILE = Path("/run/slurmctld-hpcdesk-devcluster.pid")


@pytest.fixture(scope="session")
def devcluster() -> None:
    if os.geteuid() != 0:
        pytest.fail("cluster tests run as root (they drive the dev cluster); see README")
    if run(["bash", str(DEVCLUSTER), "status"]).returncode != 0:
        up = run(["bash", str(DEVCLUSTER), "up"], timeout=300)
        if up.returncode != 0:
            pytest.fail(f"devcluster up failed:\n{up.stdout}\n{up.stderr}")


@pytest.fixture(scope="session")
def installed(devcluster: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel from this checkout and install it into the shared venv."""
    if not (VENV / "bin/python").exists():
        pytest.fail(f"{VENV} is missing: run `make setup` (see README)")
    dist = tmp_path_factory.mktemp("dist")
    build = run([str(VENV / "bin/python"), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "-w", str(dist), str(REPO)], timeout=300)
    assert build.returncode == 0, build.stderr
    wheel = next(dist.glob("hpcdesk-*.whl"))
    inst = run([str(VENV / "bin/python"), "-m", "pip", "install", "--no-deps",
                "--force-reinstall", str(wheel)], timeout=300)
    assert inst.returncode == 0, inst.stderr
    return VENV / "bin/hpcdesk"


@dataclass
class User:
    name: str
    home: Path
    hpcdesk: Path

    def run(self, *args: str, timeout: float = 240, env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess[str]:
        proc = run(as_user(self.name, str(self.hpcdesk), *args, env=env), timeout=timeout,
                   cwd="/")
        if check and proc.returncode != 0:
            raise AssertionError(f"hpcdesk {' '.join(args)} -> {proc.returncode}\n"
                                 f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def json(self, *args: str, timeout: float = 240) -> Any:
        proc = self.run(*args, "--json", timeout=timeout, check=True)
        return json.loads(proc.stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(as_user(self.name, str(self.hpcdesk), *args),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")

    def sessions_root(self) -> Path:
        return self.home / ".hpcdesk/sessions"


@pytest.fixture(scope="session")
def user(installed: Path) -> Iterator[User]:
    u = User(USER, home(USER), installed)
    yield u
    # Leave no job behind, whatever the tests did.
    run(["scancel", "-u", USER])


@contextlib.contextmanager
def controller_stopped() -> Iterator[None]:
    """slurmctld stopped, then started again with its saved state (devcluster.sh up), even
    if the body fails. The controller is the whole cluster's: keep the body short."""
    pid = int(CTLD_PIDFILE.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        yield
    finally:
        up = run(["bash", str(DEVCLUSTER), "up"], timeout=300)
        assert up.returncode == 0, up.stderr


@pytest.fixture(scope="session")
def second_user(installed: Path) -> Iterator[User]:
    """Another researcher on the same cluster (created on demand, like the first)."""
    if run(["id", USER2]).returncode != 0:
        up = run(["bash", str(DEVCLUSTER), "up"], timeout=300,
                 env={**os.environ, "HPCDESK_DEV_USER": USER2})
        assert up.returncode == 0, up.stderr
    u = User(USER2, home(USER2), installed)
    yield u
    run(["scancel", "-u", USER2])


@pytest.fixture
def protected_regular() -> Iterator[None]:
    """fs.protected_regular=1 (systemd's default) for the test, the previous value after.
    The sysctl is machine-wide: never run this while someone else's tests are running."""
    path = Path("/proc/sys/fs/protected_regular")
    before = path.read_text().strip()
    path.write_text("1")
    try:
        yield
    finally:
        path.write_text(before)


@pytest.fixture
def cleanup_jobs(user: User) -> Iterator[list[str]]:
    """Sessions a test starts; cancelled at the end even if the test failed."""
    started: list[str] = []
    yield started
    for sid in started:
        user.run("cancel", sid, *SITE, timeout=90)


@pytest.fixture(scope="module")
def site_dir() -> Iterator[Path]:
    """Site files (and other inputs) readable by the dev users (pytest's tmp_path is root's
    alone)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="hpcdesk-site-", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_site(site_dir: Path, name: str, **sections: dict[str, Any]) -> Path:
    """The dev cluster's site file with some sections changed, as `site_dir/name.yaml`
    (readable by the dev users)."""
    import yaml

    data = yaml.safe_load((REPO / f"site-configs/{SITE_NAME}.yaml").read_text())
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    path = site_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)
    return path


def place_window(user: User, session: str, colour: str = "#13a86b", where: str = "+0+0",
                 root: Path | None = None, command: tuple[str, ...] = ()) -> None:
    """An xterm of a known colour on a session's display, started on its node as the user
    (the pixel checks look for it in the browser); `command` runs in it (xterm -e)."""
    state = json.loads(((root or user.sessions_root()) / session / "node.json").read_text())
    xterm = node_exec(str(state["node"]), *on_display(
        user.name, state, "sh", "-c", 'setsid -f "$@" </dev/null >/dev/null 2>&1', "sh",
        "xterm", "-bg", colour, "-geometry", f"200x80{where}",
        *(["-e", *command] if command else [])))
    assert xterm.returncode == 0, xterm.stderr


def node_user_pids(node: str, user: str = USER) -> list[str]:
    """The dev user's processes inside a node's network namespace (compared by ns inode), each
    as "PID COMMAND"; one without a command line (exiting) shows as "PID [comm]", as in ps."""
    ns = os.stat(f"/run/netns/{node}").st_ino
    uid = int(run(["id", "-u", user]).stdout)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            if os.stat(f"/proc/{entry}/ns/net").st_ino == ns:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                if not cmd.strip():
                    # An exiting process (a zombie) has no command line: name it as ps does,
                    # so every line is "PID COMMAND" and it still counts as left behind.
                    cmd = f"[{Path(f'/proc/{entry}/comm').read_text().strip()}]"
                pids.append(f"{entry} {cmd.strip()}")
        except OSError:
            continue
    return pids


def http_status(url: str, auth: tuple[str, str] | None) -> int:
    import base64
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the session's self-signed certificate
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def colour_fraction(png: Path, rgb: tuple[int, int, int], tol: int = 40) -> float:
    from PIL import Image

    img = Image.open(png).convert("RGB")
    px = img.get_flattened_data() if hasattr(img, "get_flattened_data") else img.getdata()
    hits = sum(1 for p in px if all(abs(p[i] - rgb[i]) <= tol for i in range(3)))
    return hits / (img.width * img.height)


def python() -> str:
    return sys.executable


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float,
               stderr: bool = False) -> str:
    """What the process printed on stdout (or stderr) up to and including the line holding
    `needle` (a reader thread, so a line already buffered is never waited for)."""
    stream = proc.stderr if stderr else proc.stdout
    assert stream is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in iter(stream.readline, "")],
                     daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            seen.append(lines.get(timeout=left))
        except queue.Empty:
            break
        if needle in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"{needle!r} never came; output so far:\n{''.join(seen)}")


def ws_upgrade_status(host: str, port: int, path: str, token: str | None,
                      headers: tuple[str, ...] = (), tls: bool = True) -> int:
    """The HTTP status of a WebSocket upgrade (101: it would stream). The token goes where the
    Selkies page puts a fragment token: a subprotocol, never the URL."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Version: 13",
             "Sec-WebSocket-Key: " + base64.b64encode(secrets.token_bytes(16)).decode(),
             *headers]
    if token:
        enc = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        lines.append(f"Sec-WebSocket-Protocol: selkies, selkies.token.{enc}")
    with socket.create_connection((host, port), timeout=20) as raw:
        s: socket.socket = raw
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            s = ctx.wrap_socket(raw, server_hostname=host)
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(s.recv(4096).decode(errors="replace").split()[1])
