"""Issue 21: hpcdesk's images under the real Apptainer on the dev cluster, as the unprivileged
user: the KDE Plasma image built here (cached by content), its exact screen sizes with the
agent's xorg.conf, the KDE session live in headless Chromium over websockets, webrtc and the
VNC fallback, token mode inside the image, and the image's Selkies receiving every setting
the host runtime's Selkies receives."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import User, colour_fraction, http_status, node_user_pids, ws_upgrade_status
from test_apptainer import IMAGE_SITE, build_image, debian_image, image_xorg_screen
from tooling import require

from harness import browser
from harness.devcluster import VENV, node_exec, on_display

pytestmark = [pytest.mark.cluster, pytest.mark.apptainer]
__all__ = ["debian_image"]  # the module fixture of test_apptainer.py, shared
GREEN = (0x13, 0xA8, 0x6B)
KDE = ("--runtime", "apptainer", "--image", "kde")


@pytest.fixture(scope="module")
def kde_image(user: User) -> str:
    """The KDE Plasma image."""
    return build_image(user, "kde", timeout=5400)


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (1920, 1080), (2560, 1440)])
def test_kde_image_exact_screen_from_the_agents_xorg_conf(user: User, kde_image: str,
                                                          width: int, height: int) -> None:
    """The KDE image's Xorg, started with the xorg.conf and cookie the agent's one generator
    wrote (the image has none of its own), gives exactly the size asked for (xdpyinfo)."""
    assert image_xorg_screen(user, kde_image, width, height, 24) == (width, height)


def _moving_window(node: str, user: User, state: dict[str, str]) -> None:
    """A green xterm at the top left whose text changes ten times a second (a moving picture),
    started on the node as the user on the container's display with the agent's cookie."""
    loop = 'i=0; while :; do i=$((i+1)); echo "frame $i"; sleep 0.1; done'
    res = node_exec(node, *on_display(user.name, state, "sh", "-c",
                                      'setsid -f "$@" </dev/null >/dev/null 2>&1', "sh", "xterm",
                                      "-bg", "#13a86b", "-fg", "black", "-geometry", "120x40+0+0",
                                      "-e", "sh", "-c", loop))
    assert res.returncode == 0, res.stderr


def _live(min_green: float = 0.05) -> tuple[dict[str, int], object]:
    """A screenshot check: the placed window is visible, and the picture changes between two
    shots in which it is (the desktop streams, it is not a still)."""
    seen = {"changes": 0}
    prev: dict[str, bytes] = {}

    def ok(png: Path) -> bool:
        from PIL import Image

        if colour_fraction(png, GREEN) <= min_green:
            return False
        data = Image.open(png).convert("RGB").tobytes()
        if "last" in prev and prev["last"] != data:
            seen["changes"] += 1
        prev["last"] = data
        return seen["changes"] >= 2
    return seen, ok


@pytest.mark.parametrize(("interface", "transport"), [
    ("selkies", "websockets"), ("selkies", "webrtc"), ("vnc", "websockets")])
def test_kde_session_live_in_the_browser(user: User, kde_image: str, interface: str,
                                         transport: str, tmp_path: Path,
                                         cleanup_jobs: list[str]) -> None:
    require("chromium", package="chromium")
    data = user.json("submit", *IMAGE_SITE, *KDE, "--interface", interface,
                     "--set", f"desktop.transport={transport}", timeout=400)
    sid, node = str(data["session"]), str(data["node"])
    cleanup_jobs.append(sid)
    auth = (str(data["user"]), str(data["password"]))
    assert http_status(str(data["url"]), auth) == 200
    assert http_status(str(data["url"]), None) == 401
    state = json.loads((user.sessions_root() / sid / "node.json").read_text())
    # KDE Plasma runs in the container: its window manager and shell on the job's display.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        procs = " ".join(node_user_pids(node))
        if "kwin_x11" in procs and "plasmashell" in procs:
            break
        time.sleep(1)
    assert "kwin_x11" in procs and "plasmashell" in procs, procs[-2000:]
    _moving_window(node, user, state)
    seen, ok = _live()
    with browser.Chromium() as tools:
        tools.open(str(data["url"]), init_script=browser.RTC_SPY if transport == "webrtc"
                   else None, login=auth)
        live = tools.wait_for(tmp_path / "kde.png", ok, timeout=120)  # type: ignore[arg-type]
        configs = tools.peer_configs() if transport == "webrtc" else None
    assert live, f"no moving KDE desktop in the browser ({tmp_path}, {seen})"
    if transport == "webrtc":
        assert configs, "the page made no WebRTC connection"


@pytest.mark.parametrize("flavor", ["debian", "kde"])
def test_token_mode_inside_the_image(user: User, request: pytest.FixtureRequest, flavor: str,
                                     tmp_path: Path, cleanup_jobs: list[str]) -> None:
    """desktop.auth: token with an hpcdesk image: its Selkies runs with the agent's master
    token (by file, never in an environment or argv), the agent proved before publishing that
    an anonymous WebSocket is refused, and the printed link streams the desktop."""
    require("chromium", package="chromium")
    request.getfixturevalue(f"{flavor}_image")
    data = user.json("submit", *IMAGE_SITE, "--runtime", "apptainer", "--image", flavor,
                     "--set", "desktop.auth=token", timeout=400)
    sid, node = str(data["session"]), str(data["node"])
    cleanup_jobs.append(sid)
    assert data["state"] == "ready" and data["password"] is None
    token, url = str(data["token"]), str(data["url"])
    assert url.endswith(f"/#token={token}")
    host, port = str(data["host"]), int(data["port"])
    assert http_status(url.split("#")[0], None) == 200
    assert ws_upgrade_status(host, port, "/api/websockets", None) == 401
    assert ws_upgrade_status(host, port, "/api/websockets", token) == 101
    agent_log = (user.sessions_root() / sid / "agent.log").read_text()
    # No process of the session holds the master token in its command line, and apptainer's
    # own environment holds no secret (the entrypoint read it from a 0600 file).
    for line in node_user_pids(node):
        pid = line.split()[0]
        environ = node_exec(node, "cat", f"/proc/{pid}/environ").stdout
        if "apptainer" in line.split()[1]:
            assert "SELKIES_MASTER_TOKEN" not in environ
            assert "SELKIES_BASIC_AUTH_PASSWORD" not in environ
    assert "MASTER_TOKEN=" not in agent_log
    state = json.loads((user.sessions_root() / sid / "node.json").read_text())
    _moving_window(node, user, state)
    shot = tmp_path / f"token-{flavor}.png"
    assert browser.watch(url, shot, lambda p: colour_fraction(p, GREEN) > 0.05, timeout=120), shot


SETTINGS = ("desktop.framerate=24", "desktop.video_bitrate=3000", "desktop.rate_control=crf",
            "desktop.video_crf=31", "desktop.jpeg_quality=71", "desktop.encode_threading=always",
            "desktop.audio=false", "desktop.audio_bitrate=64000", "desktop.enable_resize=true",
            "desktop.dpi=144", "desktop.url_path=/desk/", "desktop.encoder=x264enc-striped")
# Values that name per-session things: the port, files under each session's own work
# directory, the host's web root (the image has its own), and the secrets.
# The image's entrypoint also starts its Selkies before the X server, waiting for a file
# (SELKIES_APP_WAIT_READY, SELKIES_APP_READY_FILE): start-up order, not a desktop setting.
PER_SESSION = {"SELKIES_PORT", "SELKIES_HTTPS_CERT", "SELKIES_HTTPS_KEY",
               "SELKIES_RTC_CONFIG_JSON", "SELKIES_WEB_ROOT", "SELKIES_BASIC_AUTH_PASSWORD",
               "SELKIES_MASTER_TOKEN", "SELKIES_APP_WAIT_READY", "SELKIES_APP_READY_FILE",
               # each desktop's own audit receiver (node/audit.py): its port and bearer secret
               "SELKIES_AUDIT_WEBHOOK_URL", "SELKIES_AUDIT_WEBHOOK_TOKEN"}


def _selkies_environment(node: str, port: int) -> dict[str, str]:
    """The environment of the Selkies process that serves `port` on `node` (host or image)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in node_user_pids(node):
            pid, cmd = line.split(" ", 1)
            if "bin/selkies" not in cmd:
                continue
            raw = node_exec(node, "cat", f"/proc/{pid}/environ").stdout
            env = dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)
            if env.get("SELKIES_PORT") == str(port):
                return {k: v for k, v in env.items() if k.startswith("SELKIES_")}
        time.sleep(0.5)
    raise AssertionError(f"no Selkies process serves port {port} on {node}")


def test_image_selkies_receives_the_hosts_settings(user: User, debian_image: str,
                                                   cleanup_jobs: list[str]) -> None:
    """Every desktop setting with a non-default value: the Selkies inside the image gets the
    same SELKIES_* environment as the host runtime's Selkies (the one mapping,
    node/selkies_settings.py), bar what names per-session paths and secrets."""
    # Both on one node (no GPU needed), so that the bind address is the same too.
    sets = [a for s in SETTINGS for a in ("--set", s)]
    sets += ["--set", "scheduler.extra_args=['--nodelist=gpu02']", "-G", "0"]
    # The host runtime runs this test run's Selkies (the venv the cluster tests install into).
    host = user.json("submit", *IMAGE_SITE, *sets, "--set", f"runtime.selkies={VENV}/bin/selkies",
                     timeout=400)
    cleanup_jobs.append(str(host["session"]))
    image = user.json("submit", *IMAGE_SITE, "--runtime", "apptainer", "--image", "debian", *sets,
                      timeout=400)
    cleanup_jobs.append(str(image["session"]))
    got = {name: _selkies_environment(str(d["node"]), int(d["port"]))
           for name, d in (("host", host), ("image", image))}
    for name, d in (("host", host), ("image", image)):
        env = got[name]
        assert env["SELKIES_PORT"] == str(d["port"])
        assert env["SELKIES_RTC_CONFIG_JSON"].endswith("/rtc/rtc.json")
    same = {n: {k: v for k, v in env.items() if k not in PER_SESSION} for n, env in got.items()}
    assert same["image"] == same["host"]
    # Both get an audit receiver and its secret (the image's by --env-file).
    assert {k for k in PER_SESSION if k.startswith("SELKIES_AUDIT")} <= set(got["image"])
    # The settings really arrived (not two identical defaults).
    h = same["host"]
    assert (h["SELKIES_FRAMERATE"], h["SELKIES_VIDEO_BITRATE"], h["SELKIES_RATE_CONTROL_MODE"],
            h["SELKIES_VIDEO_CRF"], h["SELKIES_JPEG_QUALITY"]) == ("24", "3000", "crf", "31", "71")
    assert h["SELKIES_CPU_ENCODE_THREADING"] == "true" and h["SELKIES_AUDIO_ENABLED"] == "false|locked"
    assert h["SELKIES_ENABLE_RESIZE"] == "true" and h["SELKIES_SCALING_DPI"] == "144"
    assert h["SELKIES_SUBFOLDER"] == "/desk/" and h["SELKIES_ENCODER"] == "h264enc-striped"
    assert h["SELKIES_AUDIO_BITRATE"] == "64000"
    # Both serve Selkies' web client in place: the image's Selkies from the image's own copy
    # (node/selkies_web.py), so no 11 MB copy lands in the container's /tmp on each start.
    web_root = got["image"]["SELKIES_WEB_ROOT"]
    assert node_exec(str(image["node"]), "runuser", "-u", user.name, "--", "apptainer", "exec",
                     debian_image, "test", "-f", f"{web_root}/index.html").returncode == 0
    state = json.loads((user.sessions_root() / str(image["session"]) / "node.json").read_text())
    container_tmp = Path(state["workdir"]) / "apptainer/tmp"
    listing = node_exec(str(image["node"]), "ls", "-a", str(container_tmp)).stdout.split()
    assert listing and not [n for n in listing if n.startswith("selkies_web")], listing
