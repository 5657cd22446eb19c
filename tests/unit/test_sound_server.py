"""The session's sound server (node/sound.py) and the sound settings Selkies gets.

The server tests start a real PulseAudio (Debian pulseaudio) in a temporary directory and talk
to it with the real `pactl`; the settings tests pin what Selkies is told.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tooling import require

from hpcdesk import config
from hpcdesk.errors import ConfigError
from hpcdesk.node import sound
from hpcdesk.node.node_checks import node_checks
from hpcdesk.node.runtime import DesktopPlan
from hpcdesk.node.runtime.apptainer import ImageKind, contract_env
from hpcdesk.node.selkies_settings import selkies_env
from hpcdesk.node.xserver import XFiles
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig


def pactl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C", **env}
    return subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=20,
                          env=clean, check=False)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[sound.Sound]:
    require("pulseaudio", package="pulseaudio")
    require("pactl", package="pulseaudio-utils")
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    started = sound.start(work, {"PATH": "/usr/bin:/bin"}, tmp_path / "sound.log",
                          microphone=False)
    assert started.on, started.reason
    yield started
    assert started.child is not None
    sound.stop(started.child)


def test_server_is_ready_with_its_sinks_and_defaults(server: sound.Sound) -> None:
    env = server.env()
    assert env["PULSE_SERVER"] == f"unix:{server.socket}"
    info = pactl(env, "info")
    assert info.returncode == 0, info.stderr
    assert "Default Sink: output" in info.stdout
    assert "Default Source: SelkiesVirtualMic" in info.stdout
    sinks = pactl(env, "list", "short", "sinks").stdout
    sources = pactl(env, "list", "short", "sources").stdout
    assert {"output", "input"} <= {line.split("\t")[1] for line in sinks.splitlines()}
    assert {"output.monitor", "SelkiesVirtualMic"} <= {
        line.split("\t")[1] for line in sources.splitlines()}


def test_server_is_private(server: sound.Sound) -> None:
    assert server.socket is not None and server.cookie is not None
    directory = server.socket.parent
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(server.cookie.stat().st_mode) == 0o600
    # Another user cannot connect: not with the published PULSE_SERVER, not with the cookie's
    # path either (the 0700 directory stops both; the server's cookie check stands behind it).
    if os.geteuid() != 0:
        pytest.fail("this test runs as root (it tries the server as another user, nobody)")
    other = subprocess.run(
        ["runuser", "-u", "nobody", "--", "env", "-i", "PATH=/usr/bin:/bin", "HOME=/nonexistent",
         *(f"{k}={v}" for k, v in server.env().items()), "pactl", "info"],
        capture_output=True, text=True, timeout=20, check=False)
    assert other.returncode != 0 and "Server Name" not in other.stdout
    assert "denied" in other.stderr.lower() or "refused" in other.stderr.lower(), other.stderr
    # Nothing but the Unix socket: no TCP listener, no abstract socket of its own.
    assert server.child is not None
    argv = Path(f"/proc/{server.child.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-n" in argv and not any(b"tcp" in a for a in argv)
    script = (directory / "server.pa").read_text()
    assert "module-native-protocol-tcp" not in script and "auth-anonymous=0" in script


def test_server_stops_when_told(tmp_path: Path) -> None:
    require("pulseaudio", package="pulseaudio")
    work = tmp_path / "w"
    work.mkdir(mode=0o700)
    started = sound.start(work, {"PATH": "/usr/bin:/bin"}, None, microphone=True)
    assert started.on and started.child is not None and started.microphone
    assert "microphone allowed" in started.reason
    sound.stop(started.child)
    assert not started.child.alive()


def test_no_server_on_the_node_is_off_with_the_reason(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no pulseaudio here
    got = sound.start(tmp_path, {}, None, microphone=True)
    assert not got.on and got.env() == {}
    assert "install pulseaudio pulseaudio-utils" in got.reason
    ok, why = sound.probe()
    assert not ok and "no sound server" in why
    checks = {c.name: c for c in node_checks({}, cpus=2, sound_probe=sound.probe)}
    assert checks["sound"].status == "warn" and "without sound" in checks["sound"].detail
    assert "pulseaudio" in checks["sound"].fix


def test_no_server_on_the_node_runs_the_images(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a daemon on the node the image's runs: `apptainer exec` of the image, the
    server's directory its only bind, its settings through APPTAINERENV_ (never argv)."""
    directory = tmp_path / "pulse"
    image = sound.InImage("apptainer", "/img/debian-bookworm-1.sif")
    argv, env = image.wrap(directory, sound.daemon_argv("/usr/bin/pulseaudio", directory),
                           sound.daemon_env({"PATH": "/usr/bin"}, directory))
    assert argv[:5] == ["apptainer", "exec", "--cleanenv", "--contain", "--home"]
    assert argv[5:8] == [str(directory), "/img/debian-bookworm-1.sif", "pulseaudio"]
    assert f"--file={directory / 'server.pa'}" in argv and "--bind" not in argv
    assert env["APPTAINERENV_PULSE_CONFIG"] == str(directory / "daemon.conf")
    assert "APPTAINERENV_HOME" not in env
    # An image that cannot run it: off, with both reasons.
    monkeypatch.setenv("PATH", str(tmp_path))
    work = tmp_path / "w"
    work.mkdir(mode=0o700)
    got = sound.start(work, {}, None, False, timeout=5,
                      image=sound.InImage("/bin/false", "/img/none.sif"))
    assert not got.on and "no sound server on this node" in got.reason
    assert "the image's own failed too" in got.reason


def test_doctor_node_finds_a_working_server() -> None:
    require("pulseaudio", package="pulseaudio")
    require("pactl", package="pulseaudio-utils")
    ok, detail = sound.probe()
    assert ok, detail
    assert "16." in detail or "runs as this user" in detail


# -- what Selkies is told ----------------------------------------------------------------
def plan(tmp_path: Path, audio: bool, microphone: bool,
         env: dict[str, str] | None = None) -> DesktopPlan:
    req = DesktopRequest(session_id="abc123", user="alice", cpus=2, gpus=0, start_timeout=300,
                         desktop=DesktopConfig(audio=True),
                         runtime=RuntimeConfig(), network=NetworkConfig())
    return DesktopPlan(request=req, session_dir=tmp_path / "s", workdir=tmp_path / "w",
                       bind_addr="10.0.0.5", web_port=40001, user="alice", password="pw",
                       encoder="x264enc", encoder_threads=1, xorg_driver="dummy", bus_id=None,
                       tls_cert=None, tls_key=None, sound_env=env or {}, audio=audio,
                       microphone=microphone)


PULSE = {"PULSE_SERVER": "unix:/w/pulse/native", "PULSE_COOKIE": "/w/pulse/cookie"}


@pytest.mark.parametrize(("audio", "mic", "want"), [
    (True, True, ("true", "true", "demand")),
    (True, False, ("true", "false|locked", "false")),
    (False, True, ("false|locked", "false|locked", "false")),  # no server: nothing to unlock
])
def test_selkies_sound_settings(tmp_path: Path, audio: bool, mic: bool,
                                want: tuple[str, str, str]) -> None:
    env = selkies_env(plan(tmp_path, audio, mic, PULSE if audio else None), ":5")
    assert (env["SELKIES_AUDIO_ENABLED"], env["SELKIES_MICROPHONE_ENABLED"],
            env["SELKIES_MICROPHONE_ON_START"]) == want
    assert ("PULSE_SERVER" in env) is audio


def test_the_image_gets_the_same_server(tmp_path: Path) -> None:
    x = XFiles(xauthority=tmp_path / "w/xauth", conf=None)
    env = contract_env(plan(tmp_path, True, False, PULSE), ":5", ImageKind("debian", False),
                       x, None)
    assert env["PULSE_SERVER"] == PULSE["PULSE_SERVER"]
    assert env["PULSE_COOKIE"] == PULSE["PULSE_COOKIE"]
    assert env["SELKIES_MICROPHONE_ENABLED"] == "false|locked"
    off = contract_env(plan(tmp_path, False, False), ":5", ImageKind("egl", True), x, None)
    assert off["SELKIES_AUDIO_ENABLED"] == "false" and "PULSE_SERVER" not in off


@pytest.mark.usefixtures("isolated_config")
def test_microphone_is_site_only(tmp_path: Path) -> None:
    assert config.load(None).config.policy.microphone is False  # default: off
    with pytest.raises(ConfigError, match="only the site file may set this"):
        config.load(None, {"policy.microphone": True})
    user_file = tmp_path / "xdg/hpcdesk/config.yaml"
    user_file.parent.mkdir(parents=True)
    user_file.write_text("policy:\n  microphone: true\n")
    with pytest.raises(ConfigError, match="only the site file may set this"):
        config.load(None)
    user_file.unlink()
    site = tmp_path / "site.yaml"
    site.write_text("policy:\n  microphone: true\n")
    assert config.load(str(site)).config.policy.microphone is True


@pytest.mark.usefixtures("isolated_config")
def test_dev_cluster_turns_audio_on() -> None:
    site = Path(__file__).resolve().parents[2] / "site-configs/devcluster.yaml"
    assert config.load(str(site)).config.desktop.audio is True
    assert os.path.exists(site)


@pytest.mark.parametrize(("desktop", "reason"), [
    ({"audio": False}, "off (desktop.audio is false)"),
    ({"interface": "vnc"}, "off (the VNC interface carries no sound; use selkies)"),
])
def test_the_agent_says_why_there_is_no_sound(tmp_path: Path, desktop: dict[str, Any],
                                              reason: str) -> None:
    from hpcdesk.node.agent import Agent

    sdir = tmp_path / "sess01"
    sdir.mkdir(mode=0o700)
    req = DesktopRequest(session_id=sdir.name, user="alice", cpus=1, gpus=0, start_timeout=60,
                         desktop=DesktopConfig(**desktop), runtime=RuntimeConfig(),
                         network=NetworkConfig())
    (sdir / "request.json").write_text(req.to_json())
    agent = Agent(sdir)
    agent.workdir = tmp_path
    got = agent.start_sound()
    assert not got.on and got.child is None and got.reason == reason
    assert agent.state["sound"] == {"on": False, "microphone": False, "reason": reason}
    assert not (tmp_path / "pulse").exists()
