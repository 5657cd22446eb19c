"""Access: the auth default, the site's data policy (site-only, mapped to Selkies), shares and
the audit receiver (a real loopback HTTP exchange), and links that carry no credentials."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from test_config import write

from hpcdesk import config, shares
from hpcdesk.errors import ConfigError
from hpcdesk.laptop import tunnel
from hpcdesk.laptop.endpoint import Endpoint
from hpcdesk.node.audit import AUDIT_FILE, AuditReceiver
from hpcdesk.node.selkies_policy import policy_env
from hpcdesk.schema import PolicyConfig

pytestmark = pytest.mark.usefixtures("isolated_config")


def test_auth_default_is_token_where_the_runtime_has_it(tmp_path: Path) -> None:
    assert config.load(None).config.desktop.auth == "token"  # host runtime
    # hpcdesk's own images have Selkies 2.x (token mode); the selkies-project ones do not.
    site = write(tmp_path / "site.yaml", "runtime:\n  kind: apptainer\n  image: debian\n")
    assert config.load(str(site)).config.desktop.auth == "token"
    site = write(tmp_path / "site.yaml", "runtime:\n  kind: apptainer\n  image: glx.sif\n")
    assert config.load(str(site)).config.desktop.auth == "basic"
    assert config.load(None, {"desktop.auth": "basic"}).config.desktop.auth == "basic"


def test_token_mode_takes_webrtc(tmp_path: Path) -> None:
    cfg = config.load(None, {"desktop.transport": "webrtc"}).config
    assert (cfg.desktop.auth, cfg.desktop.transport) == ("token", "webrtc")


@pytest.mark.parametrize("key,value", [("policy.file_transfers", "both"),
                                       ("policy.clipboard", "both"),
                                       ("policy.sharing", "control"),
                                       ("policy.share_max", "7-00:00:00"),
                                       ("policy.printing", True)])
def test_a_user_cannot_widen_the_policy(tmp_path: Path, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"{key}: only the site file may set this"):
        config.load(None, {key: value})
    section, name = key.split(".")
    write(tmp_path / "xdg/hpcdesk/config.yaml", f"{section}:\n  {name}: {json.dumps(value)}\n")
    with pytest.raises(ConfigError, match=f"{key}: only the site file may set this"):
        config.load(None)


def test_the_site_sets_the_policy_and_config_show_says_so(tmp_path: Path) -> None:
    site = write(tmp_path / "site.yaml", "policy:\n  clipboard: out\n  file_transfers: download\n"
                 "  transfer_limit_mbps: 20\n  sharing: 'off'\n")
    loaded = config.load(str(site))
    p = loaded.config.policy
    assert (p.clipboard, p.file_transfers, p.transfer_limit_mbps, p.sharing) == (
        "out", "download", 20.0, "off")
    shown = config.render_show(loaded)
    assert "policy.clipboard" in shown and f"site file {site}" in shown
    assert "policy.printing" in shown


def test_safe_defaults() -> None:
    p = PolicyConfig()
    assert (p.file_transfers, p.printing, p.sharing) == ("none", False, "view-only")


@pytest.mark.parametrize("policy,expected", [
    (PolicyConfig(), {"SELKIES_ENABLE_CLIPBOARD": "true", "SELKIES_FILE_TRANSFERS": "none",
                      "SELKIES_PRINTING_ENABLED": "false", "SELKIES_ENABLE_SHARED": "true",
                      "SELKIES_ENABLE_BINARY_CLIPBOARD": "false",
                      "SELKIES_ENABLE_COLLAB": "false"}),
    (PolicyConfig(clipboard="out", file_transfers="both", transfer_limit_mbps=2.5,
                  printing=True, sharing="off"),
     {"SELKIES_ENABLE_CLIPBOARD": "out", "SELKIES_FILE_TRANSFERS": "upload,download",
      "SELKIES_FILE_TRANSFER_LIMIT_MBPS": "2.5", "SELKIES_PRINTING_ENABLED": "true",
      "SELKIES_ENABLE_SHARED": "false"}),
    (PolicyConfig(clipboard="off", file_transfers="upload"),
     {"SELKIES_ENABLE_CLIPBOARD": "false", "SELKIES_FILE_TRANSFERS": "upload"}),
    (PolicyConfig(clipboard="in", file_transfers="download"),
     {"SELKIES_ENABLE_CLIPBOARD": "in", "SELKIES_FILE_TRANSFERS": "download"}),
])
def test_policy_reaches_selkies(policy: PolicyConfig, expected: dict[str, str]) -> None:
    env = policy_env(policy, None)
    assert {k: env[k] for k in expected} == expected
    assert "SELKIES_AUDIT_WEBHOOK_URL" not in env


@pytest.mark.parametrize("text,secs", [("30m", 1800), ("2h", 7200), ("1d", 86400),
                                       ("1h30m", 5400), ("45s", 45), ("2:00:00", 7200),
                                       ("90", 5400)])
def test_durations(text: str, secs: int) -> None:
    assert shares.parse_duration(text) == secs


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        shares.parse_duration(text)


def test_shares_file_is_private_and_the_node_keeps_the_site_limits(tmp_path: Path) -> None:
    view = shares.add(tmp_path, "viewer", 3600, now=1000.0)
    ctl = shares.add(tmp_path, "controller", 3600, now=1000.0)
    long = shares.add(tmp_path, "viewer", 10 * 3600, now=1000.0)  # edited past the cap
    assert stat.S_IMODE(os.stat(tmp_path / shares.SHARES_FILE).st_mode) == 0o600
    policy = PolicyConfig(sharing="view-only", share_max="2:00:00")
    live, refused = shares.granted(shares.load(tmp_path), policy, 2000.0)
    assert [s.id for s in live] == [view.id, long.id]
    assert "view-only" in refused[ctl.id]
    live, refused = shares.granted(shares.load(tmp_path), policy, 1000.0 + 3 * 3600)
    assert live == [] and refused[long.id] == "expired"  # capped at 2 h, not the 10 asked
    assert shares.next_expiry(shares.load(tmp_path), policy, 2000.0) == 1000.0 + 3600
    assert shares.revoke(tmp_path, view.id, now=2100.0) is not None
    live, refused = shares.granted(shares.load(tmp_path), PolicyConfig(sharing="control"),
                                   2200.0)
    assert refused[view.id] == "revoked" and {s.id for s in live} == {ctl.id, long.id}
    live, refused = shares.granted(shares.load(tmp_path), PolicyConfig(sharing="off"), 2200.0)
    assert live == [] and all("does not allow sharing" in r for r in refused.values())


class Collector(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        Collector.got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        return


@pytest.fixture
def collector() -> Iterator[str]:
    Collector.got = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/events"
    srv.shutdown()
    srv.server_close()


def post(url: str, body: bytes, token: str | None) -> int:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_audit_events_become_private_lines_and_reach_the_site(tmp_path: Path,
                                                              collector: str) -> None:
    receiver = AuditReceiver(tmp_path, "abc123", collector).start()
    try:
        sink = receiver.sink
        assert sink.url.startswith("http://127.0.0.1:")
        event = {"event": "file.download", "ts": "2026-12-03T21:00:00.000Z", "name": "a.txt",
                 "size": 5}
        assert post(sink.url, json.dumps(event).encode(), None) == 401
        assert post(sink.url, json.dumps(event).encode(), "guess") == 401
        assert post(sink.url, b"not json", sink.token) == 400
        assert post(sink.url, json.dumps(event).encode(), sink.token) == 204
        lines = (tmp_path / AUDIT_FILE).read_text().splitlines()
        assert [json.loads(line) for line in lines] == [{**event, "session": "abc123"}]
        assert stat.S_IMODE(os.stat(tmp_path / AUDIT_FILE).st_mode) == 0o600
        env = policy_env(PolicyConfig(), sink)
        assert env["SELKIES_AUDIT_WEBHOOK_URL"] == sink.url
        assert env["SELKIES_AUDIT_WEBHOOK_TOKEN"] == sink.token
        deadline = time.monotonic() + 10
        while not Collector.got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert Collector.got == [{**event, "session": "abc123"}]
    finally:
        receiver.stop()


def endpoint(url: str, user: str = "", password: str = "") -> Endpoint:
    return Endpoint.from_status({"session": "s1", "url": url, "user": user,
                                 "password": password})


@pytest.mark.parametrize("url,user,password", [
    ("https://gpu01:40001/#token=t0k", "", ""),
    ("https://gpu01:40001/", "u20", "s3cret"),
])
def test_tunnel_open_page_carries_no_credentials_before_the_fragment(
        monkeypatch: pytest.MonkeyPatch, url: str, user: str, password: str) -> None:
    opened: list[str] = []
    monkeypatch.setattr(tunnel.webbrowser, "open", lambda u: opened.append(u) or True)
    folder = tunnel.open_in_browser(endpoint(url, user, password), 5555)
    page = (folder / "open.html").read_text()
    before_fragment = page.replace("#token=t0k", "")
    assert "@127.0.0.1" not in page and (not password or password not in before_fragment)
    assert f"https://127.0.0.1:5555/{'#token=t0k' if 'token' in url else ''}" in page
    assert opened == [(folder / "open.html").as_uri()]


def test_share_needs_a_token_desktop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcdesk import cli
    from hpcdesk.session import create, write_json

    root = tmp_path / "sessions"
    site = write(tmp_path / "site.yaml", f"session_root: {root}\n")
    s = create(root)
    write_json(s.path("session.json"), {"created": 1.0, "job_id": "7"})
    write_json(s.path("connection.json"), {"url": "https://n:1/", "user": "u",
                                           "password": "p", "token": None})
    assert cli.main(["share", s.id, "--site", str(site)]) == 2
    assert "desktop.auth=token" in capsys.readouterr().err
