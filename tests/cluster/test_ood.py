"""Issue 13 acceptance: the Open OnDemand app that `hpcdesk ood generate` writes, rendered by
the real ood_core batch connect template (Ruby), submitted to the dev cluster, and opened by
headless Chromium through nginx configured as OOD's /rnode/ proxy.

What stands in for OOD's dashboard is tests/cluster/ood_dashboard.rb: it renders the app's ERB
files with Ruby's ERB as the dashboard does and builds the batch script with ood_core's own
`Factory.build_basic`; the job goes to the real Slurm as the test user. OOD's proxy is Debian's
nginx with OOD's /rnode/ rules (prefix stripped, WebSocket upgrade, Authorization removed).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import browser
import pytest
import yaml
from conftest import (
    NODE_IPS,
    REPO,
    VENV,
    User,
    _run,
    colour_fraction,
    http_status,
    node_user_pids,
    place_window,
)
from oodharness import (
    FORM,
    copy_ood_core,
    dashboard,
    generate_app,
    new_work_dir,
    sbatch,
    wait_for_file,
)
from tooling import require

pytestmark = pytest.mark.cluster
SITE = "devcluster"
GREEN = (0x13, 0xA8, 0x6B)

# OOD's /rnode/HOST/PORT/... proxy (ood-portal-generator's rules, in nginx): the prefix is
# stripped, WebSockets are upgraded, and the Authorization header does not reach the app.
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
  access_log {prefix}/access.log;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    location ~ ^/rnode/(?<node_host>[A-Za-z0-9.-]+)/(?<node_port>[0-9]+)(?<node_uri>/.*)?$ {{
      set $target_uri $node_uri;
      if ($target_uri = "") {{ set $target_uri "/"; }}
      proxy_pass http://$node_host:$node_port$target_uri$is_args$args;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $http_host;
      proxy_set_header Authorization "";
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }}
    # /node/HOST/PORT/...: the same, with the prefix kept (the app is told its subfolder).
    location ~ ^/node/(?<node_host>[A-Za-z0-9.-]+)/(?<node_port>[0-9]+)/ {{
      proxy_pass http://$node_host:$node_port;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header Host $http_host;
      proxy_set_header Authorization "";
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }}
  }}
}}
"""


@pytest.fixture(scope="module")
def app(user: User) -> Path:
    require("ruby", package="ruby")
    return generate_app(user, user.home / "ood-apps" / "hpcdesk")


@pytest.fixture(scope="module")
def ood_core(user: User) -> Path:
    return copy_ood_core(user)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(proc: subprocess.Popen[str], port: int, timeout: float = 30) -> bool:
    """Wait until nginx listens on port (True) or has exited (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    raise AssertionError(f"nginx did not listen on {port} within {timeout} s")


@pytest.fixture
def proxy(user: User, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """nginx as OOD's proxy, unprivileged, on a loopback port: (base URL, access log)."""
    require("nginx", package="nginx")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = user.home / f"ood-proxy-{tmp_path.name}"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir()
    _run(["chown", "-R", f"{user.name}:", str(prefix)])
    for _attempt in range(5):  # another process may take the free port before nginx binds it
        port = free_port()
        (prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=prefix, port=port))
        proc = subprocess.Popen(
            ["runuser", "-u", user.name, "--", nginx, "-p", str(prefix), "-e",
             str(prefix / "error.log"), "-c", str(prefix / "nginx.conf")],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if _listening(proc, port):
            break
    else:
        pytest.fail(f"nginx did not start: {(prefix / 'error.log').read_text()}")
    try:
        yield f"http://127.0.0.1:{port}", prefix / "access.log"
    finally:
        pid = (prefix / "nginx.pid").read_text().strip() if (prefix / "nginx.pid").exists() else ""
        if pid:
            _run(["kill", "-QUIT", pid])
        proc.terminate()
        proc.wait(20)
        shutil.rmtree(prefix, ignore_errors=True)


def ws_status(base: str, path: str, token: str | None) -> int:
    """Status of a WebSocket upgrade through the proxy (101: it would stream)."""
    host, port = base.removeprefix("http://").split(":")
    headers = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
               "Connection: Upgrade", "Sec-WebSocket-Version: 13",
               "Sec-WebSocket-Key: " + base64.b64encode(secrets.token_bytes(16)).decode()]
    if token:  # the carrier the page uses for a fragment token: a subprotocol, not the URL
        enc = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
        headers.append(f"Sec-WebSocket-Protocol: selkies, selkies.token.{enc}")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(("\r\n".join(headers) + "\r\n\r\n").encode())
        first = s.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
    return int(first.split()[1])


def test_generated_app_is_complete_and_parses(app: Path) -> None:
    names = {str(p.relative_to(app)) for p in app.rglob("*") if p.is_file()}
    assert names == {"manifest.yml", "form.yml", "submit.yml.erb", "view.html.erb", "icon.png",
                     "template/before.sh.erb", "template/script.sh.erb",
                     "template/after.sh.erb"}
    manifest = yaml.safe_load((app / "manifest.yml").read_text())
    assert manifest["role"] == "batch_connect" and manifest["category"] == "Interactive Apps"
    form = yaml.safe_load((app / "form.yml").read_text())
    assert form["form"] == list(FORM)
    attrs = form["attributes"]
    assert attrs["hpcdesk_partition"]["options"] == [["gpu", "gpu"]]  # the site's partition
    assert attrs["hpcdesk_hours"]["max"] == 8 and attrs["hpcdesk_gpus"]["max"] == 1
    assert [o[0] for o in attrs["hpcdesk_interface"]["options"]] == ["selkies"]
    from PIL import Image

    with Image.open(app / "icon.png") as icon:
        assert icon.size == (64, 64)
    # No port finding of OOD's: the agent picks the port.
    code = [line for p in (app / "template").iterdir() for line in p.read_text().splitlines()
            if not line.lstrip().startswith("#")]
    assert not [line for line in code if "find_port" in line]


@pytest.mark.parametrize("route", ["rnode", "node"])
def test_ood_session_through_the_proxy(user: User, app: Path, ood_core: Path, route: str,
                                       proxy: tuple[str, Path], tmp_path: Path) -> None:
    require("chromium", package="chromium")
    base, access_log = proxy
    if route == "node":  # a site that prefers /node/: Selkies serves under its subfolder
        site = yaml.safe_load((REPO / "site-configs/devcluster.yaml").read_text())
        site["ood"] = {"proxy": "node"}
        site_file = user.home / "ood-node-site.yaml"
        site_file.write_text(yaml.safe_dump(site))
        _run(["chown", f"{user.name}:", str(site_file)])
        app = generate_app(user, user.home / "ood-apps" / "hpcdesk-node", site=str(site_file))
    work = new_work_dir(user)
    rendered = dashboard(user, ood_core, "submit", app, work, FORM)
    assert rendered.returncode == 0, rendered.stderr
    submit = json.loads(rendered.stdout)
    assert "--partition=gpu" in submit["native"] and "--gres=gpu:1" in submit["native"]
    script = Path(submit["script"])
    assert "OodCore" not in script.read_text() and "create_yml" in script.read_text()
    t0 = time.monotonic()
    job = sbatch(user, script, submit["native"], work)
    conn_yml = work / "connection.yml"
    try:
        wait_for_file(conn_yml, job)
        ready_after = time.monotonic() - t0
        assert conn_yml.stat().st_mode & 0o777 == 0o600  # OOD's create_yml: umask 077
        conn = yaml.safe_load(conn_yml.read_text())
        token, host, port = str(conn["token"]), str(conn["host"]), int(conn["port"])
        assert len(token) >= 30 and host in NODE_IPS.values()
        view = dashboard(user, ood_core, "view", app, work)
        assert view.returncode == 0, view.stderr
        href = re.search(r'href="([^"]+)"', view.stdout)
        assert href, view.stdout
        link = href.group(1)
        assert link == f"/{route}/{host}/{port}/#token={token}"

        # The session is an ordinary hpcdesk session: list, status, and what tunnel reads.
        sid = str(conn["hpcdesk_session"])
        listed = user.json("list", "--site", SITE)
        assert any(s["session"] == sid and s["state"] == "ready" and s["job_id"] == job
                   for s in listed), listed
        status = user.json("status", sid, "--site", SITE)
        assert status["state"] == "ready" and status["url"].endswith(f"/#token={token}")
        from hpcdesk.laptop.endpoint import Endpoint

        ep = Endpoint.from_status(status)
        assert ep.target == (host, port) and ep.local_url(5000).endswith(f"#token={token}")

        # Through the proxy: an anonymous WebSocket is refused, the token's is accepted.
        assert ws_status(base, f"/{route}/{host}/{port}/api/websockets", None) == 401
        assert ws_status(base, f"/{route}/{host}/{port}/api/websockets", token) == 101

        # A window of a known colour on the desktop, placed from the node itself.
        node_state = json.loads((user.sessions_root() / sid / "node.json").read_text())
        node = str(node_state["node"])
        place_window(user, sid)
        with browser.Chromium() as chromium:
            t1 = time.monotonic()
            chromium.open(base + link)
            shot = tmp_path / "ood-desktop.png"
            seen = chromium.wait_for(shot, lambda png: colour_fraction(png, GREEN) > 0.10)
            assert seen, f"the desktop is not visible through the proxy (last: {shot})"
            shown_after = time.monotonic() - t1
        # The same link without its fragment token: the page loads, its WebSocket is refused
        # (the page says so), and no desktop is shown.
        with browser.Chromium() as chromium:
            chromium.open(base + link.split("#")[0])
            assert chromium.wait_until(
                "document.body && document.body.innerText.includes('WebSocket disconnected')")
            shot = tmp_path / "ood-no-token.png"
            assert not chromium.wait_for(shot, lambda png: colour_fraction(png, GREEN) > 0.02,
                                         timeout=0), f"a desktop showed without the token ({shot})"
        assert re.search(rf'"GET /{route}/{re.escape(host)}/{port}/api/websockets[^"]*" 401 ',
                         access_log.read_text()), "the token-less WebSocket was not refused"

        # The token is in connection.yml/connection.json only: not in the job script, the
        # form, any log, the proxy's log, Slurm's view of the job or a command line.
        sdir = user.sessions_root() / sid
        for path in [*work.iterdir(), *sdir.iterdir()]:
            if path.is_file() and path.name not in ("connection.yml", "connection.json"):
                assert token not in path.read_text(errors="replace"), path
        assert token not in access_log.read_text()
        assert f"/{route}/{host}/{port}/" in access_log.read_text()
        assert token not in _run(["scontrol", "show", "job", "-dd", job]).stdout
        assert token not in _run(["ps", "-eww", "-o", "args"]).stdout
        agent_pid = node_state["agent_pid"]
        assert token not in Path(f"/proc/{agent_pid}/environ").read_bytes().decode(
            errors="replace")
        print(f"ood: connection.yml after {ready_after:.1f}s, desktop through the proxy after "
              f"{shown_after:.1f}s")
        # `hpcdesk cancel` stops it like any other session (OOD's clean_up runs as the job ends).
        assert user.json("cancel", sid, "--site", SITE)["state"] == "cancelled"
    finally:
        _run(["scancel", job])
    deadline = time.monotonic() + 60
    while _run(["squeue", "-h", "-j", job]).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _run(["squeue", "-h", "-j", job]).stdout.strip()
    deadline = time.monotonic() + 30
    while node_user_pids(node) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert node_user_pids(node) == []


# The bad inputs of tests/cluster/test_desktop.py::test_bad_input_is_one_clear_error, sent
# through the form's fields (the form has no free-form keys: a key it lacks is refused too).
@pytest.mark.parametrize(("field", "value", "needle"), [
    ("hpcdesk_resolution", "wide", "is not WIDTHxHEIGHT"),
    ("hpcdesk_resolution", "0x0", "desktop.width: 0 is out of range"),
    ("hpcdesk_resolution", "100000x1", "desktop.width: 100000 is out of range"),
    ("hpcdesk_hours", "-5", "is not a Slurm time"),
    ("hpcdesk_hours", "1:xx", "is not a Slurm time"),
    ("hpcdesk_partition", "nosuchpartition", "invalid partition"),
    ("hpcdesk_account", "a'b", "scheduler.account"),
    ("hpcdesk_account", "UTC\n;id", "scheduler.account"),
    ("hpcdesk_gpus", "99", "more than this site offers"),
    ("hpcdesk_interface", "vnc", "is not offered"),
])
def test_bad_form_value_is_refused_before_sbatch(user: User, app: Path, ood_core: Path,
                                                 field: str, value: str, needle: str) -> None:
    def job_ids() -> set[str]:
        return set(_run(["squeue", "-h", "-u", user.name, "-t", "all", "-o", "%i"]).stdout.split())

    before = job_ids()
    sessions_before = set(p.name for p in user.sessions_root().iterdir())
    work = new_work_dir(user)
    proc = dashboard(user, ood_core, "submit", app, work, {**FORM, field: value})
    # submit.yml.erb raised: the dashboard shows the message and submits nothing.
    assert proc.returncode != 0
    assert needle.lower() in proc.stderr.lower(), proc.stderr
    assert "hpcdesk: form:" in proc.stderr
    assert not (work / "job_script.sh").exists()
    assert job_ids() <= before
    assert set(p.name for p in user.sessions_root().iterdir()) == sessions_before


def test_failed_start_fails_the_ood_session_with_the_agents_reason(
        user: User, app: Path, ood_core: Path, tmp_path: Path) -> None:
    """after.sh ends the job with the agent's message when the desktop cannot start."""
    site = user.home / "ood-broken-site.yaml"
    devsite = yaml.safe_load((REPO / "site-configs/devcluster.yaml").read_text())
    devsite["runtime"]["session"] = "/nonexistent/window-manager"
    site.write_text(yaml.safe_dump(devsite))
    out = user.home / "ood-apps" / "broken"
    _run(["chown", f"{user.name}:", str(site)])
    user.run("ood", "generate", "--site", str(site), "--out", str(out), "--force",
             "--hpcdesk", str(VENV / "bin/hpcdesk"), check=True)
    work = new_work_dir(user)
    rendered = dashboard(user, ood_core, "submit", out, work, FORM)
    assert rendered.returncode == 0, rendered.stderr
    submit = json.loads(rendered.stdout)
    job = sbatch(user, Path(submit["script"]), submit["native"], work)
    deadline = time.monotonic() + 180
    while _run(["squeue", "-h", "-j", job]).stdout.strip():
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.5)
    log = (work / "output.log").read_text()
    assert "/nonexistent/window-manager" in log, log
    assert "the desktop did not start" in log
    assert not (work / "connection.yml").exists()
    state = _run(["scontrol", "show", "job", "-o", job]).stdout
    assert "JobState=FAILED" in state and "ExitCode=1:0" in state, state


def test_cli_token_mode(user: User, cleanup_jobs: list[str], tmp_path: Path) -> None:
    """desktop.auth: token from the command line: the link carries the token in its fragment,
    the page loads without credentials, and only a WebSocket with the token streams."""
    require("chromium", package="chromium")
    data = user.json("submit", "--site", SITE, "--set", "desktop.auth=token")
    cleanup_jobs.append(str(data["session"]))
    assert data["state"] == "ready" and data["password"] is None
    token = str(data["token"])
    url = str(data["url"])
    assert url.endswith(f"/#token={token}") and url.startswith("https://")
    base = url.split("#")[0]
    assert http_status(base, None) == 200  # the page itself holds no secret
    host, port = str(data["host"]), int(data["port"])
    import ssl

    def upgrade(with_token: bool) -> int:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        lines = ["GET /api/websockets HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket",
                 "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                 "Sec-WebSocket-Key: " + base64.b64encode(secrets.token_bytes(16)).decode()]
        if with_token:
            enc = base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")
            lines.append(f"Sec-WebSocket-Protocol: selkies, selkies.token.{enc}")
        with socket.create_connection((host, port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as s:
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            return int(s.recv(4096).decode(errors="replace").split()[1])

    assert upgrade(False) == 401 and upgrade(True) == 101
    place_window(user, str(data["session"]))
    shot = tmp_path / "token-desktop.png"
    assert browser.watch(url, shot, lambda png: colour_fraction(png, GREEN) > 0.10), shot
    for path in (user.sessions_root() / str(data["session"])).iterdir():
        if path.is_file() and path.name != "connection.json":
            assert token not in path.read_text(errors="replace"), path
