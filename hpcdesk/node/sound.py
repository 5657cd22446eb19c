"""Each desktop's own sound server: a PulseAudio daemon the agent starts as the user.

The server is private to the session: its socket and its cookie lie in the agent's 0700
work directory (``<workdir>/pulse/``), it speaks only that Unix socket (no TCP, no D-Bus,
no abstract socket) and refuses a client without the cookie. Applications in the desktop
and Selkies find it through ``PULSE_SERVER`` and ``PULSE_COOKIE``; the work directory is
bound into the container at its own path, so the images use the same server.

What it holds, created by its start script before the socket opens (so an open socket
means a server that is ready):
- ``output``: a null sink, the default sink. Applications play into it; Selkies captures
  its monitor (``audio_device_name`` ``output.monitor``, Selkies' default) and streams it.
- ``input`` + ``SelkiesVirtualMic``: the sink Selkies plays the browser's microphone into,
  and the recordable source on its monitor, the default source. Selkies reuses both. With
  the microphone not allowed, Selkies' microphone is locked off, nothing plays into
  ``input`` and a recording in the desktop is silence.

No sound server on the node is not an error: the desktop starts with audio off, and the
reason is published (node.json, connection.json) so that `submit` and `status` say it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcdesk.node.errors import StartError
from hpcdesk.node.procs import Child, spawn

log = logging.getLogger(__name__)

SINK = "output"  # Selkies' capture sink (audio_control.DEFAULT_CAPTURE_SINK)
MIC_SINK = "input"  # audio_control.VIRTUAL_MIC_SINK
MIC_SOURCE = "SelkiesVirtualMic"  # audio_control.VIRTUAL_MIC_SOURCE
RATE = 48000  # Opus' rate: nothing is resampled on the way to the browser
PACKAGES = "pulseaudio pulseaudio-utils"  # Debian's names, for the messages below
START_TIMEOUT = 15.0
DAEMON = "pulseaudio"  # runtime.sound_server's default


@dataclass
class Sound:
    """The session's sound, as started (or why not)."""

    on: bool
    reason: str  # what a user reads: "on (...)" or why it is off
    microphone: bool = False  # the browser's microphone may reach the desktop
    socket: Path | None = None
    cookie: Path | None = None
    child: Child | None = None

    def env(self) -> dict[str, str]:
        """What a client needs to reach the server (empty when sound is off): the socket's
        path and the cookie file's path, never the cookie itself."""
        if not self.on or self.socket is None or self.cookie is None:
            return {}
        return {"PULSE_SERVER": f"unix:{self.socket}", "PULSE_COOKIE": str(self.cookie)}

    def describe(self) -> dict[str, object]:
        """For node.json and connection.json: paths only (the cookie's content stays in
        its 0600 file), so that the user's own tools can reach the server."""
        return {"on": self.on, "microphone": self.microphone, "reason": self.reason,
                **self.env()}


def off(reason: str) -> Sound:
    return Sound(False, reason)


def find_server(command: str = DAEMON) -> tuple[str | None, str]:
    """(the daemon's path, "") or (None, why it cannot run here)."""
    daemon = shutil.which(command)
    if daemon is None:
        return None, (f"no sound server on this node ({command!r} not found): install "
                      f"{PACKAGES} (Debian) or pulseaudio (RHEL/EPEL), or set "
                      "runtime.sound_server to its path")
    return daemon, ""


def start_script(directory: Path) -> str:
    """The server's whole configuration (`pulseaudio -n -F`): nothing of the system's
    default.pa is loaded, so no hardware, no D-Bus, no TCP and no autospawn socket."""
    return "\n".join([
        f"load-module module-null-sink sink_name={SINK} rate={RATE} "
        "sink_properties=device.description=Desktop",
        f"load-module module-null-sink sink_name={MIC_SINK} rate={RATE} "
        "sink_properties=device.description=Browser-microphone",
        f"load-module module-virtual-source source_name={MIC_SOURCE} master={MIC_SINK}.monitor",
        f"set-default-sink {SINK}",
        f"set-default-source {MIC_SOURCE}",
        # Last: the socket appears only when everything above exists.
        f"load-module module-native-protocol-unix socket={directory / 'native'} "
        f"auth-cookie={directory / 'cookie'} auth-cookie-enabled=1 auth-anonymous=0",
        "",
    ])


def daemon_argv(daemon: str, directory: Path) -> list[str]:
    return [daemon, "--daemonize=no", "-n", f"--file={directory / 'server.pa'}",
            "--exit-idle-time=-1", "--use-pid-file=no", "--system=no", "--realtime=no",
            "--high-priority=no", "--disallow-exit", "--log-target=stderr", "--log-level=notice"]


def daemon_env(base: Mapping[str, str], directory: Path) -> dict[str, str]:
    """PulseAudio keeps its state and runtime files below `directory`; no DISPLAY (it would
    try X11 and D-Bus autolaunch), no session bus."""
    keep = ("PATH", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ")
    env = {k: v for k, v in base.items() if k in keep}
    env.update({
        # Its own daemon.conf and home: nothing of the user's or the system's is read
        # (a user's ~/.config/pulse written for a laptop must not change this server).
        "HOME": str(directory),
        "PULSE_CONFIG": str(directory / "daemon.conf"),
        "PULSE_CLIENTCONFIG": str(directory / "client.conf"),
        "PULSE_STATE_PATH": str(directory / "state"),
        "PULSE_RUNTIME_PATH": str(directory / "run"),
        "XDG_RUNTIME_DIR": str(directory / "run"),
        "XDG_CONFIG_HOME": str(directory / "config"),
        "DBUS_SESSION_BUS_ADDRESS": "disabled:",
    })
    return env


def prepare(directory: Path) -> tuple[Path, Path]:
    """The server's private directory (0700), its start script and a fresh cookie (0600)."""
    directory.mkdir(mode=0o700, exist_ok=False)
    for sub in ("state", "run", "config"):
        (directory / sub).mkdir(mode=0o700)
    (directory / "server.pa").write_text(start_script(directory))
    (directory / "daemon.conf").write_text(f"default-sample-rate = {RATE}\n")
    (directory / "client.conf").write_text("autospawn = no\n")
    cookie = directory / "cookie"
    fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(secrets.token_bytes(256))  # PulseAudio's cookie length
    return directory / "native", cookie


def stop(child: Child) -> None:
    """End this one server (its own process group), nothing else of the caller's."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(wait)
            return


def _answers(path: Path) -> bool:
    """The server's socket accepts a connection (it lies in our 0700 directory: ours)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


@dataclass(frozen=True)
class InImage:
    """Run the daemon from the desktop's image (`apptainer exec`) where the node has none:
    only its own directory is bound in (as the home, read-write, at the same path)."""

    apptainer: str
    image: str

    def wrap(self, directory: Path, argv: list[str], env: Mapping[str, str]
             ) -> tuple[list[str], dict[str, str]]:
        outer = {k: v for k, v in os.environ.items() if k in ("PATH", "USER", "LOGNAME", "LANG")}
        outer.update({f"APPTAINERENV_{k}": v for k, v in env.items() if k != "HOME"})
        return ([*shlex.split(self.apptainer), "exec", "--cleanenv", "--contain",
                 "--home", str(directory), self.image,
                 DAEMON, *argv[1:]], outer)


def start(workdir: Path, env: Mapping[str, str], log_path: Path | None, microphone: bool,
          timeout: float = START_TIMEOUT, command: str = DAEMON,
          image: InImage | None = None) -> Sound:
    """Start the session's server below `workdir`; a Sound that is off (with the reason)
    when it cannot run. Where the node has no daemon and `image` is given, the image's
    daemon runs instead. The child is not essential: losing sound never ends a desktop."""
    daemon, why = find_server(command)
    if daemon is None and image is None:
        return off(why)
    directory = workdir / "pulse"
    sock, cookie = prepare(directory)
    argv, denv = daemon_argv(daemon or DAEMON, directory), daemon_env(env, directory)
    where = "PulseAudio"
    if daemon is None and image is not None:
        argv, denv = image.wrap(directory, argv, denv)
        where = f"PulseAudio from the image {Path(image.image).name}"
        why = f"{why}; the image's own failed too"
    try:
        child = spawn("sound server", argv, denv, log_path, essential=False)
    except StartError as exc:
        return off(f"the sound server could not start: {exc}")
    deadline = time.monotonic() + timeout
    while not (sock.exists() and _answers(sock)):
        if not child.alive():
            return off((why + ": " if daemon is None else "") +
                       "the sound server stopped at start: " + child.describe_exit())
        if time.monotonic() > deadline:
            stop(child)
            return off(f"the sound server did not open its socket within {timeout:.0f}s")
        time.sleep(0.05)
    mic = "allowed" if microphone else "not allowed by the site"
    log.info("sound server %d on %s (microphone %s)", child.pid, sock, mic)
    return Sound(True, f"on ({where}, private to this desktop; microphone {mic})",
                 microphone, sock, cookie, child)


def probe(timeout: float = START_TIMEOUT) -> tuple[bool, str]:
    """`doctor --node`: start a throwaway server as this user, ask it with `pactl`, stop
    it. (True, what ran) or (False, why sound would be off)."""
    daemon, why = find_server()
    if daemon is None:
        return False, why
    pactl = shutil.which("pactl")
    with tempfile.TemporaryDirectory(prefix="hpcdesk-sound-") as tmp:
        os.chmod(tmp, 0o700)
        sound = start(Path(tmp), os.environ, Path(tmp) / "server.log", False, timeout)
        try:
            if not sound.on:
                tail = (Path(tmp) / "server.log").read_text(errors="replace")[-400:]
                return False, sound.reason + (f"; its log ends: {tail.strip()}" if tail else "")
            if pactl is None:
                return True, (f"{daemon} runs as this user (pactl missing: install "
                              "pulseaudio-utils for the desktop's sound tools)")
            info = subprocess.run([pactl, "info"], capture_output=True, text=True, timeout=10,
                                  env={**os.environ, **sound.env()}, check=False)
            if info.returncode != 0:
                return False, f"{daemon} started but refused pactl: {info.stderr.strip()}"
            version = next((line.split(":", 1)[1].strip() for line in info.stdout.splitlines()
                            if line.startswith("Server Version")), "?")
            return True, f"{daemon} {version} runs as this user (private socket, cookie)"
        finally:
            if sound.child is not None:
                stop(sound.child)
