"""Issue 24 acceptance on the real dev cluster: the desktop's sound in the browser, the
browser's microphone in the desktop, and a sound server nobody else can reach.

A 440 Hz tone is played in the desktop with `paplay` (pulseaudio-utils) into the session's own
PulseAudio server; headless Chromium opens the printed link, and a script installed before the
page's own (browser.AUDIO_SPY) reads what the page plays through AnalyserNodes: its level and
its loudest frequency, over websockets and over webrtc. The microphone is Chromium's fake
capture device (a beep); `parecord` records the desktop's default source on the node.
"""

from __future__ import annotations

import array
import json
import math
import struct
import time
import wave
from pathlib import Path
from typing import Any

import pytest
from conftest import User, colour_fraction, node_user_pids, place_window, write_site
from test_apptainer import IMAGE_SITE, debian_image  # noqa: F401 (a fixture)
from tooling import require

from harness import browser, devcluster
from harness.devcluster import SITE, node_exec

pytestmark = pytest.mark.cluster
GREEN = (0x13, 0xA8, 0x6B)
TONE = 440.0
LOUD = 0.05     # RMS of a tone at -6 dBFS is about 0.35; the decoded silence is 0
SILENT = 64     # of 32767: a null sink's monitor with nothing playing records zeros


@pytest.fixture(scope="module")
def tone(site_dir: Path) -> Path:
    """Three seconds of a 440 Hz sine at half scale, 48 kHz mono."""
    path = site_dir / "tone-440.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48000)
        out.writeframes(b"".join(struct.pack("<h", int(16000 * math.sin(
            2 * math.pi * TONE * i / 48000))) for i in range(48000 * 3)))
    path.chmod(0o644)
    return path


@pytest.fixture(autouse=True)
def tools() -> None:
    require("paplay", "parecord", "pactl", package="pulseaudio-utils")
    require("pulseaudio", package="pulseaudio")


def submit(user: User, cleanup_jobs: list[str], *args: str) -> dict[str, Any]:
    data = user.json("submit", *args)
    cleanup_jobs.append(str(data["session"]))
    assert data["state"] == "ready", data
    return dict(data)


def as_user(user: User, conn: dict[str, Any], *argv: str, timeout: float = 60) -> Any:
    """A program run on the desktop's node as the user, with the desktop's sound server (the
    published PULSE_SERVER and PULSE_COOKIE paths, as programs in the desktop get them)."""
    sound = conn["sound"]
    return node_exec(str(conn["node"]), *devcluster.as_user(
        user.name, *argv, env={"PULSE_SERVER": sound["PULSE_SERVER"],
                               "PULSE_COOKIE": sound["PULSE_COOKIE"]}), timeout=timeout)


def play_forever(user: User, conn: dict[str, Any], wav: Path) -> None:
    """paplay the tone again and again in the background; the loop ends with the server."""
    got = as_user(user, conn, "sh", "-c", 'setsid -f sh -c \'while paplay "$0"; do :; done\' '
                  '"$0" </dev/null >/dev/null 2>&1', str(wav))
    assert got.returncode == 0, got.stderr


def hear(tools: browser.Chromium, timeout: float = 90) -> list[dict[str, Any]]:
    """Samples of what the page plays, until one is the tone (or the deadline)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        levels = tools.audio_levels()
        assert levels is not None, "the audio spy was not installed"
        seen += levels
        if any(is_tone(s) for s in levels):
            return seen
        time.sleep(0.5)
    return seen


def hear_the_tone(tools: browser.Chromium, user: User, conn: dict[str, Any], wav: Path,
                  kind: str) -> None:
    """Play the tone in the desktop; the page plays it, at 440 Hz, through `kind` (webaudio:
    Selkies' websockets client; webrtc: the peer connection's audio track). The loudest
    sample is printed (the numbers in the issue note)."""
    play_forever(user, conn, wav)
    seen = hear(tools)
    tones = [s for s in seen if is_tone(s)]
    assert tones, f"no 440 Hz in the page's audio: {seen[-6:]}"
    assert {s["kind"] for s in tones} == {kind}, tones[-6:]
    best = max(tones, key=lambda s: float(s["rms"]))
    print(f"heard {best['kind']}: {float(best['peakHz']):.1f} Hz, RMS {float(best['rms']):.3f}")


def is_tone(sample: dict[str, Any]) -> bool:
    return float(sample["rms"]) > LOUD and abs(float(sample["peakHz"]) - TONE) < 15


def record(user: User, conn: dict[str, Any], seconds: int) -> int:
    """The loudest sample `parecord` takes from the desktop's default source in `seconds`."""
    raw = user.home / f"rec-{conn['session']}.raw"
    got = as_user(user, conn, "timeout", str(seconds), "parecord", "--raw", "--format=s16le",
                  "--rate=48000", "--channels=1", str(raw), timeout=seconds + 60)
    assert got.returncode in (0, 124), got.stderr  # 124: timeout ended the recording
    data = raw.read_bytes()
    raw.unlink()
    samples = array.array("h")
    samples.frombytes(data[: len(data) // 2 * 2])
    assert len(samples) > 48000, f"parecord recorded only {len(samples)} samples"
    return max(abs(s) for s in samples)


def open_desktop(tools: browser.Chromium, user: User, conn: dict[str, Any], shot: Path) -> None:
    place_window(user, str(conn["session"]))
    tools.open(str(conn["url"]), init_script=browser.AUDIO_SPY,
               login=(str(conn["user"]), str(conn["password"])))
    assert tools.wait_for(shot, lambda p: colour_fraction(p, GREEN) > 0.10), \
        f"the desktop is not visible in the browser (last screenshot: {shot})"


def test_sound_over_websockets_private_and_no_microphone_by_default(
        user: User, second_user: User, tone: Path, tmp_path: Path,
        cleanup_jobs: list[str]) -> None:
    conn = submit(user, cleanup_jobs, *SITE)
    sound = conn["sound"]
    assert sound["on"] is True and sound["microphone"] is False, sound
    assert "on (PulseAudio" in sound["reason"]
    status = user.run("status", str(conn["session"]), *SITE, check=True).stdout
    assert "sound:    on (PulseAudio" in status, status

    # Another researcher on the same node cannot reach the session's sound server, even
    # with its published socket and cookie paths.
    other = as_user(second_user, conn, "pactl", "info")
    assert other.returncode != 0 and "Server Name" not in other.stdout, other.stdout
    assert "denied" in other.stderr.lower() or "refused" in other.stderr.lower(), other.stderr

    with browser.Chromium(flags=tuple(browser.FAKE_MICROPHONE)) as tools:
        open_desktop(tools, user, conn, tmp_path / "ws.png")
        hear_the_tone(tools, user, conn, tone, "webaudio")
        # The site's default: the microphone is not allowed. The browser has a (fake)
        # microphone, yet a recording in the desktop is silence.
        quiet = record(user, conn, 10)
        print(f"microphone not allowed: loudest recorded sample {quiet}")
        assert quiet < SILENT

    node = str(conn["node"])
    user.run("cancel", str(conn["session"]), *SITE, check=True)
    deadline = time.monotonic() + 30
    while any("pulseaudio" in p for p in node_user_pids(node, user.name)) and (
            time.monotonic() < deadline):
        time.sleep(0.5)
    assert not any("pulseaudio" in p for p in node_user_pids(node, user.name))


def test_sound_over_webrtc(user: User, tone: Path, tmp_path: Path,
                          cleanup_jobs: list[str]) -> None:
    conn = submit(user, cleanup_jobs, *SITE, "--set", "desktop.transport=webrtc")
    assert conn["transport"] == "webrtc" and conn["sound"]["on"] is True
    with browser.Chromium() as tools:
        open_desktop(tools, user, conn, tmp_path / "rtc.png")
        hear_the_tone(tools, user, conn, tone, "webrtc")
    # A sound server that dies takes the sound, not the desktop, and status says so.
    node = str(conn["node"])
    pids = [p.split()[0] for p in node_user_pids(node, user.name) if "pulseaudio" in p]
    assert len(pids) == 1, pids
    assert node_exec(node, "kill", "-KILL", pids[0]).returncode == 0
    deadline = time.monotonic() + 30
    while "sound:    off: the sound server stopped" not in (text := user.run(
            "status", str(conn["session"]), *SITE, check=True).stdout):
        assert time.monotonic() < deadline, text
        time.sleep(1)
    assert user.json("status", str(conn["session"]), *SITE)["state"] == "ready"


def test_audio_false_sends_no_sound(user: User, tmp_path: Path,
                                    cleanup_jobs: list[str]) -> None:
    conn = submit(user, cleanup_jobs, *SITE, "--set", "desktop.audio=false")
    sound = conn["sound"]
    assert sound["on"] is False and "desktop.audio is false" in sound["reason"], sound
    assert "PULSE_SERVER" not in sound
    node = str(conn["node"])
    assert not any("pulseaudio" in p for p in node_user_pids(node, user.name))
    with browser.Chromium() as tools:
        open_desktop(tools, user, conn, tmp_path / "off.png")
        # The desktop streams; for as long as the tone test needed to hear it, nothing
        # audible arrives (no tap at all, or only silence).
        seen = hear(tools, timeout=20)
    assert not any(float(s["rms"]) > 0.001 for s in seen), seen[-6:]


def test_no_sound_server_starts_the_desktop_and_says_why(user: User, tmp_path: Path,
                                                         cleanup_jobs: list[str]) -> None:
    conn = submit(user, cleanup_jobs, *SITE, "--set",
                  "runtime.sound_server=/nonexistent/pulseaudio")
    sound = conn["sound"]
    assert sound["on"] is False, sound
    assert "no sound server on this node" in sound["reason"]
    assert "install pulseaudio pulseaudio-utils" in sound["reason"]
    status = user.run("status", str(conn["session"]), *SITE, check=True).stdout
    assert "sound:    off: no sound server on this node" in status, status
    status_json = user.json("status", str(conn["session"]), *SITE)
    assert status_json["sound"]["on"] is False


@pytest.mark.parametrize("transport", ["websockets", "webrtc"])
def test_microphone_allowed_by_the_site_reaches_the_desktop(
        user: User, site_dir: Path, tmp_path: Path, cleanup_jobs: list[str],
        transport: str) -> None:
    site = write_site(site_dir, f"microphone-{transport}",
                      desktop={"transport": transport}, policy={"microphone": True})
    conn = submit(user, cleanup_jobs, "--site", str(site))
    assert conn["sound"]["on"] is True and conn["sound"]["microphone"] is True, conn["sound"]
    with browser.Chromium(flags=tuple(browser.FAKE_MICROPHONE)) as tools:
        open_desktop(tools, user, conn, tmp_path / f"mic-{transport}.png")
        # parecord reading the default source (Selkies' virtual microphone) makes Selkies ask
        # the page for its microphone; Chromium's fake device beeps into it.
        loudest = record(user, conn, 15)
    print(f"microphone allowed ({transport}): loudest recorded sample {loudest}")
    assert loudest > 1000, f"the recording in the desktop is silent (max {loudest})"
    log = (user.sessions_root() / str(conn["session"]) / "selkies.log").read_text()
    assert "The microphone is read by parecord" in log
    assert json.loads((user.sessions_root() / str(conn["session"]) / "node.json")
                      .read_text())["sound"]["microphone"] is True


@pytest.mark.apptainer
@pytest.mark.usefixtures("debian_image")
@pytest.mark.parametrize("server", ["node", "image"])
def test_sound_from_the_debian_image(user: User, tone: Path, cleanup_jobs: list[str],
                                     server: str) -> None:
    """The apptainer runtime: the session's server runs on the node (or, where the node has
    none, from the image), its directory bound into the container at the same path; Selkies
    in the image streams it."""
    none = ("--set", "runtime.sound_server=/nonexistent/pulseaudio") if server == "image" else ()
    conn = submit(user, cleanup_jobs, *IMAGE_SITE, "--runtime", "apptainer", "--image",
                  "debian", *none)
    assert conn["sound"]["on"] is True, conn["sound"]
    assert ("from the image" in conn["sound"]["reason"]) is (server == "image")
    with browser.Chromium() as tools:
        tools.open(str(conn["url"]), init_script=browser.AUDIO_SPY,
                   login=(str(conn["user"]), str(conn["password"])))
        hear_the_tone(tools, user, conn, tone, "webaudio")
