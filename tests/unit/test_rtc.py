"""Selkies' ICE configuration file and environment: only the site's servers, or none."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import pytest

from hpcdesk.connect import rtc
from hpcdesk.connect.turn import IceServer
from hpcdesk.node import jobturn
from hpcdesk.node.errors import StartError
from hpcdesk.node.ports import PortLease
from hpcdesk.node.runtime import DesktopPlan
from hpcdesk.node.runtime.apptainer import build_invocation
from hpcdesk.node.selkies_settings import selkies_env
from hpcdesk.node.xserver import XFiles
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig, TurnConfig

JOB = IceServer(("turn:127.0.0.1:40100?transport=tcp",), "hpcdesk", "pw")


def test_websockets_has_no_ice_server_at_all(tmp_path: Path) -> None:
    cfg = rtc.plan(DesktopConfig(), NetworkConfig(), TurnConfig(), "alice", 3600, 0.0)
    path = tmp_path / "rtc.json"
    cfg.write(path)
    doc = json.loads(path.read_text())
    assert doc["iceServers"] == [] and doc["iceTransportPolicy"] == "all"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_webrtc_direct_without_turn_lists_nothing() -> None:
    cfg = rtc.plan(DesktopConfig(transport="webrtc"), NetworkConfig(), TurnConfig(), "a", 60, 0)
    assert cfg.servers == [] and cfg.policy == "all"


def test_webrtc_site_turn_with_relay_policy(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("xyz\n")
    secret.chmod(0o640)
    turn = TurnConfig(host="turn.example.org", secret_file=str(secret),
                      ice_transport_policy="relay")
    cfg = rtc.plan(DesktopConfig(transport="webrtc"), NetworkConfig(connect="turn"), turn,
                   "alice", 7200, 100.0)
    doc = cfg.document()
    assert doc["iceTransportPolicy"] == "relay"
    (server,) = doc["iceServers"]
    assert server["urls"] == ["turn:turn.example.org:3478?transport=udp"]
    assert server["username"].endswith(":alice") and "xyz" not in json.dumps(doc)


def test_site_turn_is_not_handed_out_for_direct(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("xyz\n")
    secret.chmod(0o640)
    turn = TurnConfig(host="turn.example.org", secret_file=str(secret))
    cfg = rtc.plan(DesktopConfig(transport="webrtc"), NetworkConfig(connect="direct"), turn,
                   "alice", 7200, 100.0)
    assert cfg.servers == []


def test_job_turn_urls_follow_the_connect_mode() -> None:
    assert rtc.job_turn_url("gpu01.cluster", 40100, "tunnel") == \
        "turn:127.0.0.1:40100?transport=tcp"
    assert rtc.job_turn_url("10.1.2.3", 40100, "direct") == "turn:10.1.2.3:40100?transport=tcp"
    net = NetworkConfig(connect="tunnel")
    assert rtc.wants_job_turn(DesktopConfig(transport="webrtc"), net)
    assert not rtc.wants_job_turn(DesktopConfig(transport="websockets"), net)
    assert rtc.wants_job_turn(DesktopConfig(transport="webrtc"), NetworkConfig(turn="job"))
    cfg = rtc.plan(DesktopConfig(transport="webrtc"), net, TurnConfig(ice_transport_policy="relay"),
                   "a", 60, 0, JOB)
    assert cfg.document()["iceServers"] == [JOB.to_json()] and cfg.policy == "relay"


def _plan(tmp_path: Path, transport: str, bind: str = "10.0.0.5") -> DesktopPlan:
    req = DesktopRequest(
        session_id="abc", user="alice", cpus=2, gpus=0, start_timeout=60,
        desktop=DesktopConfig(transport=transport),  # type: ignore[arg-type]
        runtime=RuntimeConfig(), network=NetworkConfig())
    return DesktopPlan(request=req, session_dir=tmp_path, workdir=tmp_path / "w", bind_addr=bind,
                       web_port=40001, user="alice", password="pw", encoder="x264enc",
                       encoder_threads=2, xorg_driver="dummy", bus_id=None, tls_cert=None,
                       tls_key=None, rtc_config=tmp_path / "w/rtc/rtc.json")


def test_selkies_env_websockets(tmp_path: Path) -> None:
    env = selkies_env(_plan(tmp_path, "websockets"), ":5")
    assert env["SELKIES_MODE"] == "websockets" and env["SELKIES_ENABLE_DUAL_MODE"] == "false"
    assert env["SELKIES_RTC_CONFIG_JSON"] == str(tmp_path / "w/rtc/rtc.json")
    assert env["SELKIES_ADDR"] == "10.0.0.5"
    # Every Selkies default that names a server is replaced by something that names none.
    for key in ("SELKIES_TURN_HOST", "SELKIES_STUN_HOST"):
        assert env[key].endswith(".invalid")
    assert env["SELKIES_ENABLE_CLOUDFLARE_TURN"] == "false"


def test_selkies_env_webrtc_listens_on_loopback_too(tmp_path: Path) -> None:
    env = selkies_env(_plan(tmp_path, "webrtc"), ":5")
    assert env["SELKIES_MODE"] == "webrtc" and env["SELKIES_ENABLE_DUAL_MODE"] == "true"
    assert env["SELKIES_ADDR"] == "10.0.0.5,127.0.0.1"
    assert selkies_env(_plan(tmp_path, "webrtc", "0.0.0.0"), ":5")["SELKIES_ADDR"] == "0.0.0.0"


@pytest.mark.parametrize("image", ["/img/debian-abc.sif", "/img/glx-22.04-abc.sif"])
def test_apptainer_gets_the_rtc_file(tmp_path: Path, image: str) -> None:
    x = XFiles(tmp_path / "w/Xauthority", None)
    inv = build_invocation(_plan(tmp_path, "webrtc"), image, ":5", x, {}, None)
    workdir = str(tmp_path / "w")
    assert f"{workdir}:{workdir}:ro" in inv.argv  # the rtc file's directory is inside it
    assert inv.env["APPTAINERENV_SELKIES_RTC_CONFIG_JSON"] == f"{workdir}/rtc/rtc.json"


def test_port_lease_checks_loopback_too(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        lease = PortLease("127.0.0.2", also=("127.0.0.1",))
        assert lease._probe(taken) is None
        assert PortLease("127.0.0.2")._probe(taken) == taken
        port = lease.acquire()
        assert port != taken
        lease.release()


def test_job_turn_config(tmp_path: Path) -> None:
    text = jobturn.config_text(tmp_path, 40100, "10.0.0.5", "10.0.0.5", (50000, 50015),
                               "hpcdesk", "pw")
    lines = text.splitlines()
    for want in ("listening-port=40100", "listening-ip=10.0.0.5", "listening-ip=127.0.0.1",
                 "relay-ip=10.0.0.5", "min-port=50000", "max-port=50015", "no-udp", "no-cli",
                 "lt-cred-mech", "user=hpcdesk:pw", f"pidfile={tmp_path}/turnserver.pid",
                 f"log-file={tmp_path}/turnserver.log"):
        assert want in lines
    wildcard = jobturn.config_text(tmp_path, 1, "0.0.0.0", None, (1, 2), "u", "p")
    assert "listening-ip" not in wildcard and "relay-ip" not in wildcard


def test_relay_blocks_are_picked_by_their_real_ports_not_by_names() -> None:
    """Issue 19 row 3: a block is free when its UDP ports are; names squat nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("0.0.0.0", 50005))  # one port of the first block is in use
        for _ in range(10):
            assert jobturn.pick_relay_block(50000, 50031) == 50016
        busy2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        busy2.bind(("0.0.0.0", 50020))
        with pytest.raises(RuntimeError, match="every TURN relay port block"):
            jobturn.pick_relay_block(50000, 50031)
        busy2.close()


def test_job_turn_relays_only_to_its_own_desktop(tmp_path: Path) -> None:
    """Issue 19 row 4: every peer but the desktop's own address is denied, no TCP relay."""
    text = jobturn.config_text(tmp_path, 40100, "10.0.0.5", "10.0.0.5", (50000, 50015),
                               "u", "p").splitlines()
    assert "denied-peer-ip=0.0.0.0-255.255.255.255" in text
    assert "denied-peer-ip=::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff" in text
    assert "allowed-peer-ip=10.0.0.5" in text and "no-tcp-relay" in text
    unknown = jobturn.config_text(tmp_path, 1, "0.0.0.0", None, (1, 2), "u", "p")
    assert "allowed-peer-ip" not in unknown and "denied-peer-ip=0.0.0.0-255.255.255.255" in unknown


def test_job_turn_runs_from_the_node_or_the_image(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "debian-x.sif"
    image.write_text("")
    apptainer = RuntimeConfig(kind="apptainer", image=str(image))
    monkeypatch.setattr(jobturn.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert jobturn.command(apptainer, tmp_path / "turn") == ["/usr/bin/turnserver"]
    monkeypatch.setattr(jobturn.shutil, "which", lambda name: None)
    assert jobturn.command(apptainer, tmp_path / "turn") == [
        "apptainer", "exec", "--cleanenv", "--contain", "--bind",
        f"{tmp_path}/turn:{tmp_path}/turn", str(image), "turnserver"]
    with pytest.raises(StartError, match="apt-get install coturn"):
        jobturn.command(RuntimeConfig(), tmp_path / "turn")
