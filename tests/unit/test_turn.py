"""The site's TURN server: config errors, secret files, derived credentials, REST answers."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.fake_turn_rest import Asked, fake_turn_rest
from hpcdesk import config
from hpcdesk.connect import turn
from hpcdesk.errors import ConfigError
from hpcdesk.schema import TurnConfig

pytestmark = pytest.mark.usefixtures("isolated_config")


def site(tmp_path: Path, text: str) -> str:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return str(path)


def secret_file(tmp_path: Path, content: str = "s3cret-shared\n", mode: int = 0o640) -> Path:
    path = tmp_path / "turn-secret"
    path.write_text(content)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(("yaml", "key", "needle"), [
    ("turn: {host: t.example.org, secret_file: /a, credentials_file: /b}",
     "turn.credentials_file", "two TURN auth methods"),
    ("turn: {host: t.example.org, secret_file: /a, rest_uri: 'https://x/turn'}",
     "turn.rest_uri", "two TURN auth methods"),
    ("turn: {host: t.example.org}", "turn.host", "needs an auth method"),
    ("turn: {secret_file: /a}", "turn.secret_file", "needs turn.host"),
    ("turn: {host: 192.0.2.7, tls: true, secret_file: /a}", "turn.tls", "needs a host name"),
    ("network: {connect: turn}\ndesktop: {transport: webrtc}", "network.connect",
     "configures none"),
    ("turn: {host: t.example.org, secret_file: /a}\nnetwork: {connect: turn}",
     "network.connect", "desktop.transport: webrtc"),
    ("turn: {ice_transport_policy: relay}\ndesktop: {transport: webrtc}",
     "network.connect", "turn.ice_transport_policy is 'relay'"),
])
def test_config_errors_name_the_key(tmp_path: Path, yaml: str, key: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(site(tmp_path, yaml))
    assert f": {key}: " in str(err.value) and needle in str(err.value)
    assert err.value.exit_code == 2
    assert str(tmp_path / "site.yaml") in str(err.value)  # the file to fix


def test_direct_on_a_relay_only_site_blames_the_option(tmp_path: Path) -> None:
    """A site that sends all WebRTC media through its TURN server, and a user who asks for
    --connect direct: the error names the option they gave, not the site file."""
    path = site(tmp_path, "turn: {host: t.example.org, secret_file: /a, "
                "ice_transport_policy: relay}\nnetwork: {connect: turn}\n"
                "desktop: {transport: webrtc}")
    assert config.load(path).config.network.connect == "turn"
    with pytest.raises(ConfigError) as err:
        config.load(path, {"network.connect": "direct"})
    said = str(err.value)
    assert said.startswith("command line: network.connect: 'direct' "), said
    assert "--connect turn" in said and "site file" not in said


def test_turn_keys_are_site_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="turn.host: only the site file may set this"):
        config.load(None, {"turn.host": "evil.example.com"})
    user = tmp_path / "xdg/hpcdesk/config.yaml"
    user.parent.mkdir(parents=True)
    user.write_text("turn:\n  host: evil.example.com\n")
    with pytest.raises(ConfigError, match="only the site file"):
        config.load(None)


def test_valid_turn_sites_load(tmp_path: Path) -> None:
    loaded = config.load(site(tmp_path, "turn: {host: turn.example.org, tls: true, port: 5349, "
                                        "protocol: tcp, secret_file: /etc/x, "
                                        "ice_transport_policy: relay}\n"
                                        "desktop: {transport: webrtc}\nnetwork: {connect: turn}"))
    assert loaded.config.turn.tls and turn.auth_method(loaded.config.turn) == "secret"
    rest = config.load(site(tmp_path, "turn: {rest_uri: 'https://turn.example.org/api'}"))
    assert turn.auth_method(rest.config.turn) == "rest" and turn.configured(rest.config.turn)


@pytest.mark.parametrize(("mode", "content", "needle"), [
    (0o664, "x\n", "group- or world-writable (mode 0664)"),
    (0o646, "x\n", "group- or world-writable (mode 0646)"),
    (0o600, "\n", "is empty"),
])
def test_bad_secret_files(tmp_path: Path, mode: int, content: str, needle: str) -> None:
    path = secret_file(tmp_path, content, mode)
    with pytest.raises(ConfigError, match="turn.secret_file") as err:
        turn.check_files(TurnConfig(host="t", secret_file=str(path)),
                         {"turn.secret_file": "site file /etc/hpcdesk/site.yaml"})
    assert needle in str(err.value)
    assert str(err.value).startswith("site file /etc/hpcdesk/site.yaml: turn.secret_file: ")


def test_missing_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"turn.secret_file: .*/nope does not exist"):
        turn.check_files(TurnConfig(host="t", secret_file=str(tmp_path / "nope")))


def test_long_term_file_format(tmp_path: Path) -> None:
    path = tmp_path / "creds"
    path.write_text("onlyuser\n")
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="turn.credentials_file: .* USER:PASSWORD"):
        turn.check_files(TurnConfig(host="t", credentials_file=str(path)))
    path.write_text("alice:pa:ss\n")
    servers, refresh = turn.site_servers(
        TurnConfig(host="turn.example.org", credentials_file=str(path), protocol="tcp"),
        "bob", 3600, 1000.0)
    assert refresh is None
    assert [s.to_json() for s in servers] == [{
        "urls": ["turn:turn.example.org:3478?transport=tcp"], "username": "alice",
        "credential": "pa:ss"}]


def test_shared_secret_credentials_cover_the_time_limit(tmp_path: Path) -> None:
    path = secret_file(tmp_path)
    servers, refresh = turn.site_servers(
        TurnConfig(host="turn.example.org", port=5349, tls=True, secret_file=str(path)),
        "ali:ce", 7200, 1_700_000_000.5)
    (server,) = servers
    assert refresh is None
    assert server.urls == ("turns:turn.example.org:5349?transport=udp",)
    assert server.username == f"{1_700_000_000 + 7200 + turn.LIFETIME_MARGIN}:ali-ce"
    # coturn's use-auth-secret check: base64(HMAC-SHA1(secret, username)), first line only.
    digest = hmac.new(b"s3cret-shared", str(server.username).encode(), hashlib.sha1).digest()
    assert server.credential == base64.b64encode(digest).decode()
    assert "s3cret-shared" not in json.dumps(server.to_json())


def test_ipv6_url() -> None:
    assert turn.server_url("2001:db8::1", 3478, "udp", False) == \
        "turn:[2001:db8::1]:3478?transport=udp"


@pytest.mark.parametrize(("answer", "urls", "user", "refresh"), [
    ({"username": "1:u", "password": "p", "ttl": 800,
      "uris": ["turn:t.example.org:3478?transport=udp", "http://nope"]},
     ["turn:t.example.org:3478?transport=udp"], "1:u", 600),
    ({"iceServers": [{"urls": "turns:t.example.org:443", "username": "a", "credential": "b"}]},
     ["turns:t.example.org:443"], "a", None),
])
def test_rest_answers(answer: dict[str, object], urls: list[str], user: str,
                      refresh: int | None) -> None:
    servers, got_refresh = turn.parse_rest_answer(answer)
    assert list(servers[0].urls) == urls and servers[0].username == user
    assert got_refresh == refresh


def test_rest_answer_without_servers_is_an_error() -> None:
    with pytest.raises(turn.TurnError, match="no TURN server"):
        turn.parse_rest_answer({"username": "a", "password": "b"})


@pytest.fixture
def rest_service() -> Iterator[tuple[str, list[Asked]]]:
    """A TURN REST service on loopback that records the queries it answers."""
    answer = {"username": "99:alice", "password": "pw", "ttl": 120,
              "uris": ["turn:t.example.org:3478?transport=tcp"]}
    with fake_turn_rest(lambda _user: answer) as service:
        yield service


def test_rest_fetch(rest_service: tuple[str, list[Asked]]) -> None:
    uri, seen = rest_service
    servers, refresh = turn.site_servers(TurnConfig(rest_uri=uri), "alice", 3600, 0.0)
    assert servers[0].to_json() == {"urls": ["turn:t.example.org:3478?transport=tcp"],
                                    "username": "99:alice", "credential": "pw"}
    assert refresh == 90
    assert [(a.path, a.auth_user) for a in seen] == [("/turn?service=turn&username=alice", "alice")]


def test_rest_service_down() -> None:
    with pytest.raises(turn.TurnError, match="gave no credentials"):
        turn.fetch_rest("http://127.0.0.1:9/turn", "alice", "udp", False, timeout=2)


def test_a_world_readable_secret_is_refused_with_a_right_hint(tmp_path: Path) -> None:
    """Issue 19 row 8: 0644 let every account mint TURN credentials, and the hint for a
    missing file even suggested it."""
    path = secret_file(tmp_path, mode=0o644)
    with pytest.raises(ConfigError, match="world-readable") as err:
        turn.check_files(TurnConfig(host="t", secret_file=str(path)))
    assert "chmod 0640" in str(err.value)
    with pytest.raises(ConfigError) as missing:
        turn.check_files(TurnConfig(host="t", secret_file=str(tmp_path / "nope")))
    assert "0644" not in str(missing.value) and "never world-readable" in str(missing.value)
