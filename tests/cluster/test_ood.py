"""Issue 18 acceptance: the Open OnDemand app that `hpcdesk ood generate` writes, tried with
Open OnDemand's own code instead of an imitation of it.

- The dashboard: tests/cluster/ood_dashboard.rb mirrors the dashboard's session.rb and
  session_context.rb (submit.yml.erb against the SessionContext's OpenStruct, template/*.erb
  against `TemplateBinding = Struct.new(:session, :context)`, view.html.erb against
  connection.yml's OpenStruct and OodAppkit's markdown), builds the batch script with the real
  ood_core, and the job goes to the real Slurm as OOD's Slurm adapter sends it
  (`#!/bin/bash`, `--export NONE`, `-D` a work directory whose path has a space).
- The portal: Debian's Apache httpd running the ood-portal.conf that OOD's
  ood-portal-generator makes from a test ood_portal.yml (basic auth, user_map_match), with
  mod_ood_proxy's Lua files unmodified (tests/cluster/oodportal.py).
- The person: headless Chromium answers the portal's basic-auth prompt, follows the view's
  link, and sees the live desktop, through /rnode and through the secure route.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import (
    User,
    colour_fraction,
    http_status,
    node_user_pids,
    place_window,
    ws_upgrade_status,
)
from oodharness import (
    FORM,
    as_user,
    copy_ood_core,
    dashboard,
    generate_app,
    new_work_dir,
    site_file,
    submit,
    wait_for_file,
)
from oodportal import ORIGIN, Portal, running_portal
from test_apptainer import IMAGE_DIR, debian_image
from tooling import require

from harness import browser
from harness.devcluster import NODE_IPS, SITE_NAME, VENV, run

pytestmark = pytest.mark.cluster
__all__ = ["debian_image"]  # the module fixture of test_apptainer.py, shared
GREEN = (0x13, 0xA8, 0x6B)
MAGENTA = (0xC0, 0x20, 0xC0)


@pytest.fixture(scope="module")
def ood_core(user: User) -> Path:
    require("ruby", package="ruby")
    return copy_ood_core(user)


@pytest.fixture(scope="module")
def app(user: User) -> Path:
    """The app for a site that names this run's portal origin (the default secure route)."""
    site = site_file(user, "portal", desktop={"allowed_origins": [ORIGIN]})
    return generate_app(user, user.home / "ood-apps" / "hpcdesk", site=str(site))


@pytest.fixture(scope="module")
def portal(user: User) -> Iterator[Portal]:
    with running_portal(user.name) as p:
        yield p


def ws_status(portal: Portal, path: str, token: str | None, origin: str | None) -> int:
    """A WebSocket upgrade through the portal. The test client logs in to the portal itself
    (Authorization to Apache, which mod_ood_proxy does not pass on)."""
    login = base64.b64encode(":".join(portal.login).encode()).decode()
    headers = (f"Authorization: Basic {login}", *([f"Origin: {origin}"] if origin else []))
    return ws_upgrade_status("127.0.0.1", int(portal.base.rsplit(":", 1)[1]), path, token,
                             headers)


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
    assert attrs["bc_queue"]["options"] == [["gpu", "gpu"]]  # the site's partition
    assert attrs["bc_num_hours"]["max"] == 8 and attrs["hpcdesk_gpus"]["max"] == 1
    from PIL import Image

    with Image.open(app / "icon.png") as icon:
        assert icon.size == (64, 64)
    # No port finding of OOD's: the agent picks the port.
    code = [line for p in (app / "template").iterdir() for line in p.read_text().splitlines()
            if not line.lstrip().startswith("#")]
    assert not [line for line in code if "find_port" in line]


def test_template_binding_has_only_session_and_context(user: User, app: Path,
                                                       ood_core: Path, tmp_path: Path) -> None:
    """The dashboard's TemplateBinding: a bare form name is a NameError there and nothing is
    staged; the generated templates use context.* and stage cleanly."""
    check = as_user(user, "ruby", str(ood_core / "ood_dashboard.rb"), "binding-check",
                    env={"OOD_CORE_DIR": str(ood_core / "ood_core")})
    assert check.returncode == 0, check.stderr
    assert check.stdout.splitlines()[0] == "gpu"
    assert "NameError: undefined local variable or method `bc_queue'" in check.stdout
    # The same app with one bare name in before.sh.erb (as hpcdesk's templates had it).
    bare = user.home / "ood-apps" / "bare"
    run(["rm", "-rf", str(bare)])
    run(["cp", "-a", str(app), str(bare)])
    before = bare / "template/before.sh.erb"
    before.write_text(before.read_text().replace("context.bc_queue", "bc_queue"))
    work = new_work_dir(user)
    failed = dashboard(user, ood_core, "submit", bare, work, FORM)
    assert failed.returncode != 0
    assert "undefined local variable or method `bc_queue'" in failed.stderr, failed.stderr
    work = new_work_dir(user)
    ok = dashboard(user, ood_core, "submit", app, work, FORM)
    assert ok.returncode == 0, ok.stderr
    staged = (work / "before.sh").read_text()
    assert '"bc_queue":"gpu"' in staged and "<%" not in staged
    out = json.loads(ok.stdout)
    argv = out["argv"]
    # OOD's Slurm adapter: -D the staged work dir, the smart attributes' -p / -t, --export
    # NONE, then the app's native arguments; the script begins with #!/bin/bash.
    assert argv[:3] == ["sbatch", "-D", str(work)] and " " in str(work)
    assert argv[argv.index("-p") + 1] == "gpu" and argv[argv.index("-t") + 1] == "01:00:00"
    assert argv[argv.index("--export") + 1] == "NONE" and argv[-1] == "--parsable"
    assert "--cpus-per-task=2" in argv and "--gres=gpu:1" in argv and "-A" not in argv
    assert Path(out["script"]).read_text().startswith("#!/bin/bash\n")


def test_user_config_does_not_widen_the_form(user: User, app: Path, ood_core: Path) -> None:
    """A user config asking for 8 GPUs, 7 days and another partition changes nothing in what
    the form submits."""
    before = json.loads(dashboard(user, ood_core, "submit", app, new_work_dir(user),
                                  FORM).stdout)
    cfg = user.home / ".config/hpcdesk/config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text("scheduler: {gpus: 8, time: 7-00:00:00, partition: bigmem, cpus: 64, "
                   "memory: 512G, extra_args: [--exclusive]}\n")
    run(["chown", "-R", f"{user.name}:", str(cfg.parent.parent)])
    try:
        shown = user.json("config", "show", "--site", SITE_NAME)["scheduler.gpus"]
        assert shown["value"] == 8 and shown["source"].startswith("user file")
        after = dashboard(user, ood_core, "submit", app, new_work_dir(user), FORM)
        assert after.returncode == 0, after.stderr
        got = json.loads(after.stdout)
        strip = lambda argv: [a for a in argv if "ondemand data" not in a]  # noqa: E731
        assert strip(got["argv"]) == strip(before["argv"])
        assert not [a for a in got["argv"] if re.search(r"gpu:8|7-00|bigmem|exclusive|512G", a)]
    finally:
        cfg.unlink()


@pytest.mark.parametrize("route", ["secure-rnode", "rnode", "secure-node"])
def test_ood_session_through_the_portal(user: User, ood_core: Path, portal: Portal,
                                        route: str, tmp_path: Path) -> None:
    through_the_portal(user, ood_core, portal, route, tmp_path)


@pytest.mark.apptainer
def test_ood_container_session_through_the_portal(user: User, ood_core: Path, portal: Portal,
                                                  debian_image: str, tmp_path: Path) -> None:
    """The Debian image under Apptainer, in token mode like the host's Selkies, through the
    secure route."""
    through_the_portal(user, ood_core, portal, "secure-rnode", tmp_path, name="container",
                       runtime={"kind": "apptainer", "image": "debian",
                                "image_dir": str(IMAGE_DIR)})


def through_the_portal(user: User, ood_core: Path, portal: Portal, route: str,
                       tmp_path: Path, name: str = "", **site: dict[str, object]) -> None:
    """A person's OOD session, from the form to the live desktop through the portal."""
    require("chromium", package="chromium")
    name = name or route
    site_path = site_file(user, name, ood={"proxy": route},
                          desktop={"allowed_origins": [portal.origin]}, **site)
    app = generate_app(user, user.home / "ood-apps" / f"hpcdesk-{name}", site=str(site_path))
    work = new_work_dir(user)
    t0 = time.monotonic()
    job, out = submit(user, ood_core, app, work)
    conn_yml = work / "connection.yml"
    node = ""
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
        link = href.group(1).replace("&amp;", "&")
        assert link == f"/{route}/{host}/{port}/#token={token}"
        # The card: node, real screen size, encoder and why, time left, the tunnel hint.
        node = str(conn["hpcdesk_node"])
        assert node in NODE_IPS and f"<code>{node}</code>" in view.stdout
        assert "screen <code>1280x720</code>" in view.stdout
        assert re.search(r"Video encoder <code>x264enc</code> \(.+\)", view.stdout), view.stdout
        assert re.search(r"Time left 0:[0-5]\d \(h:mm\)", view.stdout), view.stdout
        sid = str(conn["hpcdesk_session"])
        assert f"hpcdesk tunnel {sid} --login LOGIN" in view.stdout

        # An ordinary hpcdesk session: list, status, and logs (with OOD's output.log).
        listed = user.json("list", "--site", SITE_NAME)
        assert any(s["session"] == sid and s["state"] == "ready" and s["job_id"] == job
                   for s in listed), listed
        logs = user.run("logs", sid, "--site", SITE_NAME, check=True).stdout
        assert "output.log" in logs and "Script starting..." in logs, logs

        # Through the stock proxy: OOD's Apache does not keep the Host header, so only the
        # portal origin named in the site file opens a WebSocket; without a token, none.
        ws = f"/{route}/{host}/{port}/api/websockets"
        assert ws_status(portal, ws, token, portal.origin) == 101
        assert ws_status(portal, ws, token, "https://elsewhere.example.org") == 403
        assert ws_status(portal, ws, None, portal.origin) == 401

        place_window(user, sid)
        page = f"/{route}/{host}/{port}/"
        with browser.Chromium() as chromium:
            t1 = time.monotonic()
            # The link as the view prints it; the portal's login prompt answered as a person
            # answers it (browser.open's login), never credentials in the URL.
            chromium.open(portal.base + link, login=portal.login)
            shot = tmp_path / "ood-desktop.png"
            seen = chromium.wait_for(shot, lambda png: colour_fraction(png, GREEN) > 0.10)
            assert seen, f"the desktop is not visible through the portal (last: {shot})"
            shown_after = time.monotonic() - t1
            # Apache asked (401, "Open OnDemand" realm), the browser answered as the user.
            access = portal.access_log.read_text()
            assert re.search(rf'- - \[[^]]+\] "GET {re.escape(page)} HTTP/1.1" 401 ', access)
            user_line = rf'- {re.escape(user.name)} \[[^]]+\] "GET {re.escape(page)} HTTP/1.1" 200 '
            assert re.search(user_line, access), access[-2000:]
            # A moving picture: a window placed now appears in the same open page.
            place_window(user, sid, "#c020c0", "+640+0")
            moved = tmp_path / "ood-desktop-moved.png"
            assert chromium.wait_for(moved, lambda png: colour_fraction(png, MAGENTA) > 0.05), \
                f"the picture did not change (last: {moved})"
        # The same link without its fragment token: the page loads, its WebSocket is refused,
        # no desktop is shown.
        with browser.Chromium() as chromium:
            chromium.open(portal.base + link.split("#")[0], login=portal.login)
            assert chromium.wait_until(
                "document.body && document.body.innerText.includes('WebSocket disconnected')")
            shot = tmp_path / "ood-no-token.png"
            assert not chromium.wait_for(shot, lambda png: colour_fraction(png, GREEN) > 0.02,
                                         timeout=0), f"a desktop showed without the token ({shot})"
        access = portal.access_log.read_text()
        assert re.search(rf'"GET {re.escape(ws)} HTTP/1.1" 401 ', access), access[-2000:]
        assert re.search(rf'"GET {re.escape(ws)} HTTP/1.1" 101 ', access)
        if route.startswith("secure-"):  # mod_ood_proxy spoke https/wss to the node
            assert f'req_handler="proxy:wss://{host}:{port}"' in portal.error_log.read_text()
            assert f"https://{host}:{port}/" in json.dumps(user.json("status", sid, "--site",
                                                                     SITE_NAME))
        else:
            assert f'req_handler="proxy:ws://{host}:{port}"' in portal.error_log.read_text()

        # The token is in connection.yml/connection.json only: not in the job script, the
        # form, any log, the portal's logs, Slurm's view of the job or a command line.
        assert token not in portal.logs()
        sdir = user.sessions_root() / sid
        for path in [*work.iterdir(), *sdir.iterdir()]:
            if path.is_file() and path.name not in ("connection.yml", "connection.json"):
                assert token not in path.read_text(errors="replace"), path
        assert token not in run(["scontrol", "show", "job", "-dd", job]).stdout
        assert token not in run(["ps", "-eww", "-o", "args"]).stdout
        print(f"ood {name}: connection.yml after {ready_after:.1f}s, desktop through the "
              f"portal after {shown_after:.1f}s; sbatch {' '.join(out['argv'][1:])}")
        assert user.json("cancel", sid, "--site", SITE_NAME)["state"] == "cancelled"
    finally:
        run(["scancel", job])
    deadline = time.monotonic() + 60
    while run(["squeue", "-h", "-j", job]).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not run(["squeue", "-h", "-j", job]).stdout.strip()
    deadline = time.monotonic() + 30
    while node and node_user_pids(node) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not node or node_user_pids(node) == []


# The bad inputs of tests/cluster/test_desktop.py::test_bad_input_is_one_clear_error, sent
# through the form's fields (the form has no free-form keys: a key it lacks is refused too).
@pytest.mark.parametrize(("field", "value", "needle"), [
    ("hpcdesk_resolution", "wide", "is not WIDTHxHEIGHT"),
    ("hpcdesk_resolution", "0x0", "desktop.width: 0 is out of range"),
    ("hpcdesk_resolution", "100000x1", "desktop.width: 100000 is out of range"),
    ("bc_num_hours", "-5", "is not a whole number of hours"),
    ("bc_num_hours", "200", "what this site offers (8 hours)"),
    ("bc_queue", "nosuchpartition", "invalid partition"),
    ("bc_account", "a'b", "scheduler.account"),
    ("bc_account", "UTC\n;id", "scheduler.account"),
    ("hpcdesk_gpus", "99", "more than this site offers"),
    ("hpcdesk_cores", "64", "more than this site offers (2 cores)"),
    ("hpcdesk_memory", "512", "more than this site offers (2 GB)"),
])
def test_bad_form_value_is_refused_before_sbatch(user: User, app: Path, ood_core: Path,
                                                 field: str, value: str, needle: str) -> None:
    def job_ids() -> set[str]:
        return set(run(["squeue", "-h", "-u", user.name, "-t", "all", "-o", "%i"]).stdout.split())

    def sessions() -> set[str]:
        root = user.sessions_root()
        return {p.name for p in root.iterdir()} if root.exists() else set()

    before = job_ids()
    sessions_before = sessions()
    work = new_work_dir(user)
    proc = dashboard(user, ood_core, "submit", app, work, {**FORM, field: value})
    # submit.yml.erb raised: the dashboard shows the message and submits nothing.
    assert proc.returncode != 0
    assert needle.lower() in proc.stderr.lower(), proc.stderr
    assert "hpcdesk: form:" in proc.stderr
    assert not (work / "job_script.sh").exists()
    assert job_ids() <= before
    assert sessions() == sessions_before


def test_failed_start_fails_the_ood_session_with_the_agents_reason(
        user: User, ood_core: Path) -> None:
    """after.sh ends the job with the agent's message when the desktop cannot start."""
    site = site_file(user, "broken", runtime={"session": "/nonexistent/window-manager"})
    out = user.home / "ood-apps" / "broken"
    user.run("ood", "generate", "--site", str(site), "--out", str(out), "--force",
             "--hpcdesk", str(VENV / "bin/hpcdesk"), check=True)
    work = new_work_dir(user)
    job, _ = submit(user, ood_core, out, work)
    deadline = time.monotonic() + 180
    while run(["squeue", "-h", "-j", job]).stdout.strip():
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.5)
    log = (work / "output.log").read_text()
    assert "/nonexistent/window-manager" in log, log
    assert "the desktop did not start" in log
    assert not (work / "connection.yml").exists()
    state = run(["scontrol", "show", "job", "-o", job]).stdout
    assert "JobState=FAILED" in state and "ExitCode=1:0" in state, state


def test_cli_token_mode(user: User, cleanup_jobs: list[str], tmp_path: Path) -> None:
    """desktop.auth: token from the command line: the link carries the token in its fragment,
    the page loads without credentials, and only a WebSocket with the token streams."""
    require("chromium", package="chromium")
    data = user.json("submit", "--site", SITE_NAME, "--set", "desktop.auth=token")
    cleanup_jobs.append(str(data["session"]))
    assert data["state"] == "ready" and data["password"] is None
    token = str(data["token"])
    url = str(data["url"])
    assert url.endswith(f"/#token={token}") and url.startswith("https://")
    base = url.split("#")[0]
    assert http_status(base, None) == 200  # the page itself holds no secret
    host, port = str(data["host"]), int(data["port"])

    ws = "/api/websockets"
    assert ws_upgrade_status(host, port, ws, None) == 401
    assert ws_upgrade_status(host, port, ws, token) == 101
    place_window(user, str(data["session"]))
    shot = tmp_path / "token-desktop.png"
    assert browser.watch(url, shot, lambda png: colour_fraction(png, GREEN) > 0.10), shot
    for path in (user.sessions_root() / str(data["session"])).iterdir():
        if path.is_file() and path.name != "connection.json":
            assert token not in path.read_text(errors="replace"), path


def test_doctor_says_when_the_portal_origin_is_missing(user: User) -> None:
    site = site_file(user, "noorigin")
    proc = user.run("ood", "generate", "--site", str(site), "--out",
                    str(user.home / "ood-apps" / "noorigin"), "--force", "--json", check=True)
    assert "desktop.allowed_origins is not set" in proc.stderr
    assert json.loads(proc.stdout)["warnings"]
