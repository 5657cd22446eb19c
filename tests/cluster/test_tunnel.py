"""Issue 10 acceptance: `hpcdesk tunnel` from a laptop namespace through real OpenSSH servers
(keys; key + PAM TOTP; a bastion for ProxyJump) to a desktop on the dev cluster, seen by
headless Chromium in the laptop namespace. The network and servers are in sshnet.py."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import shlex
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import oodharness
import pytest
import sshnet
from conftest import User, colour_fraction, place_window
from sshnet import (
    BASTION_IP,
    LOGIN_INNER_IP,
    LOGIN_IP,
    NS_LAPTOP,
    PORT_KEY,
    PORT_OTP,
    Laptop,
    Sshd,
    laptop_python,
)
from tooling import require

from harness import browser
from harness.devcluster import SITE
from hpcdesk.commands.laptop_hint import login_name

pytestmark = pytest.mark.cluster
GREEN = (0x13, 0xA8, 0x6B)
RED = (0xC8, 0x1E, 0x1E)
BLUE = (0x1E, 0x3C, 0xC8)


@dataclass
class Net:
    laptop: Laptop
    login: Sshd
    otp: Sshd
    bastion: Sshd
    otp_secrets: tuple[str, str]
    remote: tuple[str, ...]  # --remote-command and --site for hpcdesk on the login node

    def otp_code(self, token: int = 0) -> str:
        secret = self.otp_secrets[token]
        return sshnet.sh("oathtool", "--totp", "-d", "6", secret).stdout.strip()


@pytest.fixture(scope="module")
def net(user: User) -> Iterator[Net]:
    require(sshnet.SSHD, package="openssh-server")
    require("ssh-keygen", package="openssh-client")
    require("oathtool", package="oathtool")
    require(sshnet.pam_module("pam_oath.so"), package="libpam-oath")
    sshnet.clean_stale()
    # sshd (StrictModes) reads authorized_keys as the user and wants no group/world-writable
    # directory on the way: not under /tmp (1777).
    workdir = Path(tempfile.mkdtemp(prefix=sshnet.WORKDIR_PREFIX, dir="/run"))
    os.chmod(workdir, 0o755)
    servers: list[Sshd] = []
    try:
        sshnet.network_up()
        laptop = Laptop(workdir / "laptop-home", user.name, user.hpcdesk)
        # Two TOTP tokens, asked one after the other (two keyboard-interactive rounds, as a
        # site that asks a password and then a code does).
        secrets = (os.urandom(20).hex(), os.urandom(20).hex())
        users_files = [workdir / f"users{i}.oath" for i in (1, 2)]
        for path, secret in zip(users_files, secrets, strict=True):
            path.write_text(f"HOTP/T30/6 {user.name} - {secret}\n")
            os.chmod(path, 0o600)
        common = {"workdir": workdir, "user": user.name, "authorized_key": laptop.authorized_keys}
        login = Sshd("login", listen=[(LOGIN_IP, PORT_KEY), (LOGIN_INNER_IP, PORT_KEY)],
                     **common)
        otp = Sshd("otp", listen=[(LOGIN_IP, PORT_OTP)],
                   auth_methods="publickey,keyboard-interactive",
                   pam_auth="\n".join(f"auth required pam_oath.so usersfile={f} window=2 "
                                       "digits=6" for f in users_files),
                   **common)
        bastion = Sshd("bastion", listen=[(BASTION_IP, 22)], netns=sshnet.NS_BASTION,
                       **common)
        for s in (login, otp, bastion):
            servers.append(s)
            s.start()
        other = Sshd("impostor", workdir=workdir, listen=[], user=user.name, authorized_key="")
        laptop.write("config", f"""\
# The name `hpcdesk submit --connect tunnel` prints for this login node, as a user's alias.
Host {login_name()}
    HostName {LOGIN_IP}
    Port {PORT_KEY}
Host login
    HostName {LOGIN_IP}
    Port {PORT_KEY}
    User {user.name}
    IdentityFile ~/.ssh/id_ed25519
Host login-otp
    HostName {LOGIN_IP}
    Port {PORT_OTP}
    User {user.name}
Host bastion
    HostName {BASTION_IP}
    User {user.name}
Host inner
    HostName {LOGIN_INNER_IP}
    Port {PORT_KEY}
    ProxyJump bastion
Host unknown-key
    HostName {LOGIN_IP}
    Port {PORT_KEY}
    HostKeyAlias login-not-in-known-hosts
Host changed-key
    HostName {LOGIN_IP}
    Port {PORT_KEY}
    HostKeyAlias login-changed
Host login-agent
    HostName {LOGIN_IP}
    Port {PORT_KEY}
    IdentityFile ~/.ssh/no-such-key
Host wrong-key
    HostName {LOGIN_IP}
    Port {PORT_KEY}
    IdentityFile ~/.ssh/not_authorized
    IdentitiesOnly yes
""")
        laptop.write("known_hosts", "".join([
            f"[{LOGIN_IP}]:{PORT_KEY} {login.public_key}\n",
            f"[{LOGIN_INNER_IP}]:{PORT_KEY} {login.public_key}\n",
            f"[{LOGIN_IP}]:{PORT_OTP} {otp.public_key}\n",
            f"{BASTION_IP} {bastion.public_key}\n",
            f"login-changed {other.public_key}\n",
        ]))
        laptop.own()
        yield Net(laptop, login, otp, bastion, secrets,
                  ("--remote-command", str(user.hpcdesk), *SITE))
    finally:
        sshnet.cleanup(workdir, servers)


@pytest.fixture(scope="module")
def desktop(user: User, net: Net) -> Iterator[dict[str, str]]:
    """One desktop for the tests that connect to an existing session, with a green window."""
    data = user.json("submit", *SITE, "--connect", "tunnel", timeout=240)
    try:
        place_window(user, str(data["session"]), "#13a86b", "+0+0")
        yield data
    finally:
        user.run("cancel", str(data["session"]), *SITE, timeout=90)


@dataclass
class TunnelProc:
    """`hpcdesk tunnel` running in the laptop namespace; stdout and stderr read as they come.

    With `terminal=True` its stdin and stderr are a pseudo-terminal (questions are asked
    there, as for a person)."""

    argv: list[str]
    terminal: bool = False
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.master = -1
        self.readers: list[threading.Thread] = []
        if self.terminal:
            self.master, slave = pty.openpty()
            self.proc = subprocess.Popen(self.argv, stdin=slave, stdout=subprocess.PIPE,
                                         stderr=slave, start_new_session=True, cwd="/")
            os.close(slave)
            self.readers.append(threading.Thread(target=self._read_pty, daemon=True))
        else:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True, cwd="/")
            assert self.proc.stderr is not None
            self.readers.append(threading.Thread(target=self._read, daemon=True,
                                                 args=(self.proc.stderr, self.err)))
        assert self.proc.stdout is not None
        self.readers.append(threading.Thread(target=self._read, daemon=True,
                                             args=(self.proc.stdout, self.out)))
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in iter(stream.readline, b""):  # type: ignore[attr-defined]
            into.append(line.decode(errors="replace"))

    def _read_pty(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.err.append(data.decode(errors="replace"))

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def wait_for(self, what: str, timeout: float = 240, count: int = 1) -> None:
        """Until `what` appears `count` times on stderr (fails early if the tunnel ends)."""
        deadline = time.monotonic() + timeout
        while self.stderr.count(what) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)  # the reader threads catch up with the last output
                raise AssertionError(f"no {what!r} on stderr (exit {self.proc.poll()}):\n"
                                     f"{self.stderr}\nstdout: {''.join(self.out)}")
            time.sleep(0.1)

    def ready(self, timeout: float = 240) -> dict[str, object]:
        """The JSON document the tunnel prints once it forwards the desktop."""
        deadline = time.monotonic() + timeout
        while not self.out:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                time.sleep(0.2)
                raise AssertionError(f"tunnel not ready (exit {self.proc.poll()}):\n"
                                     f"{self.stderr}\nstdout: {''.join(self.out)}")
            time.sleep(0.1)
        data = json.loads(self.out[0])
        assert isinstance(data, dict)
        return data

    def answer(self, text: str) -> None:
        os.write(self.master, text.encode() + b"\n")

    def wait(self, timeout: float = 120) -> int:
        """The exit code, once the readers also have its last output (to its end of file)."""
        code = self.proc.wait(timeout)
        for reader in self.readers:
            reader.join(10)
        return code

    def interrupt(self, timeout: float = 120) -> int:
        """Ctrl-C, as a terminal sends it (SIGINT to the process group); the exit code."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = -1


@contextlib.contextmanager
def tunnel(net: Net, *args: str, terminal: bool = False,
           env: dict[str, str] | None = None) -> Iterator[TunnelProc]:
    proc = TunnelProc(net.laptop.argv(*net.remote, *args, env=env),  # --submit goes last
                      terminal=terminal)  # --submit last
    try:
        yield proc
    finally:
        proc.close()


def login_of(info: dict[str, object]) -> tuple[str, str]:
    """What a person types into the browser's prompt (the tunnel prints it)."""
    return str(info["user"]), str(info["password"])


def laptop_http(url: str, user: str, password: str) -> int:
    """An HTTPS request from the laptop namespace; its status code."""
    proc = laptop_python(f"""
import base64, ssl, urllib.error, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
req = urllib.request.Request({url!r})
req.add_header("Authorization", "Basic " + base64.b64encode({f"{user}:{password}"!r}.encode()).decode())
try:
    print(urllib.request.urlopen(req, timeout=20, context=ctx).status)
except urllib.error.HTTPError as e:
    print(e.code)
""")
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


def shows(colour: tuple[int, int, int]) -> object:
    return lambda png: colour_fraction(png, colour) > 0.05


# -- the tests -------------------------------------------------------------------------------
def test_laptop_reaches_the_login_node_but_not_the_compute_nodes(net: Net) -> None:
    probe = laptop_python(f"""
import socket
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=3).close()
        return "open"
    except OSError as exc:
        return type(exc).__name__ + ":" + str(exc.errno)
for target in [("10.77.0.11", 22), ("10.77.0.12", 22), ("10.77.0.1", 6817),
               ("{LOGIN_INNER_IP}", {PORT_KEY}), ("{LOGIN_IP}", {PORT_KEY}),
               ("{BASTION_IP}", 22)]:
    print(target[0], reach(*target))
""")
    assert probe.returncode == 0, probe.stderr
    seen = dict(line.split() for line in probe.stdout.splitlines())
    for blocked in ("10.77.0.11", "10.77.0.12", "10.77.0.1", LOGIN_INNER_IP):
        assert seen[blocked].endswith(":101"), seen  # ENETUNREACH: no route at all
    assert seen[LOGIN_IP] == "open" and seen[BASTION_IP] == "open", seen


def test_desktop_through_the_tunnel_and_recovery(user: User, net: Net, desktop: dict[str, str],
                                                 tmp_path: Path) -> None:
    """The exact command `submit --connect tunnel` printed, run on the laptop: --open hands
    the browser (here $BROWSER, which keeps a copy) the page that opens the desktop."""
    printed = shlex.split(str(desktop["laptop_command"]))
    assert printed[:5] == ["hpcdesk", "tunnel", desktop["session"], "--login",
                           f"{user.name}@{login_name()}"]
    assert printed[-1] == "--open"
    opened = net.laptop.home / "opened.html"
    recorder = net.laptop.home / "browser"  # $BROWSER: keeps a copy of what it is given
    # It gets a file: URI; copied, then renamed: whoever sees the file sees all of it.
    recorder.write_text(
        f'#!/bin/sh\ncp "${{1#file://}}" {opened}.part && mv {opened}.part {opened}\n')
    os.chmod(recorder, 0o755)
    tun = TunnelProc(net.laptop.argv(*printed[2:], "--json", env={"BROWSER": str(recorder)}))
    with contextlib.ExitStack() as stack:
        stack.callback(tun.close)
        chrome = stack.enter_context(browser.Chromium(NS_LAPTOP))
        info = tun.ready()
        assert info["session"] == desktop["session"]
        assert info["tls_fingerprint"] == desktop["tls_fingerprint"]
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+/", str(info["url"]))
        assert info["password"] == desktop["password"]
        deadline = time.monotonic() + 30
        while not opened.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        page = opened.read_text()
        assert str(info["url"]) in page and str(info["password"]) not in page
        chrome.open(opened.as_uri(), login=login_of(info))
        shot = tmp_path / "desktop.png"
        assert chrome.wait_for(shot, shows(GREEN)), f"no desktop in the browser: {shot}"

        # Recovery: kill the sshd processes serving this connection, as a dropped link would.
        killed = net.login.kill_connections()
        assert killed, "no sshd child served the tunnel"
        tun.wait_for("dropped", timeout=60)
        tun.wait_for("reconnected after", timeout=120)
        assert tun.proc.poll() is None
        assert net.login.connection_pids(), "the tunnel did not connect again"
        # The same page, untouched, shows the live desktop again: a window placed after the
        # reconnect appears (the old connection's stream died with the old SSH link).
        place_window(user, str(desktop["session"]), "#c81e1e", "+400+300")
        shot2 = tmp_path / "after-reconnect.png"
        assert chrome.wait_for(shot2, shows(RED), timeout=120), \
            f"the page does not show the live desktop after the reconnect: {shot2}"

        # Ctrl-C closes the tunnel cleanly; the desktop keeps running.
        assert tun.interrupt() == 130
        assert f"session {desktop['session']} keeps running" in tun.stderr
        assert "Traceback" not in tun.stderr
    assert user.json("status", str(desktop["session"]), *SITE)["state"] == "ready"


def test_submit_through_the_tunnel_then_cancel_on_exit(user: User, net: Net,
                                                       tmp_path: Path) -> None:
    with tunnel(net, "--login", "login", "--json", "--cancel-on-exit",
                "--submit", "--set", "desktop.width=1280", "--set", "desktop.height=720") as tun:
        info = tun.ready()
        session = str(info["session"])
        try:
            # The login node's progress, streamed: submitted, then the waiter's steps.
            assert f"session {session}, job " in tun.stderr and "submitted" in tun.stderr
            assert re.search(r"\[\s*[\d.]+s\] .*(queued|running|desktop)", tun.stderr)
            place_window(user, session, "#1e3cc8", "+0+0")
            shot = tmp_path / "submitted.png"
            assert browser.watch(str(info["url"]), shot, shows(BLUE), netns=NS_LAPTOP,
                                 login=login_of(info)), shot
            assert tun.interrupt() == 130
            assert f"cancelling session {session}" in tun.stderr
            assert "Traceback" not in tun.stderr
            assert user.json("status", session, *SITE)["state"] == "cancelled"
        finally:
            user.run("cancel", session, *SITE, timeout=90)


def test_two_factor_login_asks_on_the_terminal(net: Net, desktop: dict[str, str]) -> None:
    with tunnel(net, str(desktop["session"]), "--login", "login-otp", "--json",
                terminal=True) as tun:
        tun.wait_for("One-time password", timeout=60)
        tun.answer(net.otp_code(0))
        tun.wait_for("One-time password", timeout=60, count=2)
        tun.answer(net.otp_code(1))
        info = tun.ready(timeout=120)
        assert laptop_http(str(info["url"]), str(info["user"]), str(info["password"])) == 200
        assert tun.interrupt() == 130


def test_wrong_two_factor_code_is_refused(net: Net, desktop: dict[str, str]) -> None:
    code = net.otp_code(0)
    wrong = f"{(int(code) + 500000) % 1000000:06d}"
    with tunnel(net, str(desktop["session"]), "--login", "login-otp", terminal=True) as tun:
        tun.wait_for("One-time password", timeout=60)
        tun.answer(wrong)
        tun.wait_for("One-time password", timeout=60, count=2)
        tun.answer(net.otp_code(1))  # the second one right: both must be
        assert tun.wait(120) == 2
        assert "refused the answers" in tun.stderr and "Traceback" not in tun.stderr


def test_ctrl_c_at_the_code_prompt_restores_the_terminal(net: Net,
                                                       desktop: dict[str, str]) -> None:
    import termios

    with tunnel(net, str(desktop["session"]), "--login", "login-otp", terminal=True) as tun:
        tun.wait_for("One-time password", timeout=60)
        assert not termios.tcgetattr(tun.master)[3] & termios.ECHO  # asked without echo
        assert tun.interrupt() == 130
        assert termios.tcgetattr(tun.master)[3] & termios.ECHO  # echo is back
        assert "Traceback" not in tun.stderr


def test_proxyjump_through_the_bastion(net: Net, desktop: dict[str, str]) -> None:
    """`inner` is the login node's address only the bastion can reach (config ProxyJump);
    the same route also given on the command line with --jump."""
    for args in (("--login", "inner"),
                 ("--login", f"{net.laptop.user}@{LOGIN_INNER_IP}:{PORT_KEY}", "--jump",
                  "bastion", "--local-port", "18443")):
        with tunnel(net, str(desktop["session"]), *args, "--json") as tun:
            info = tun.ready(timeout=120)
            if "--local-port" in args:
                assert info["url"] == "https://127.0.0.1:18443/"
            assert laptop_http(str(info["url"]), str(info["user"]),
                               str(info["password"])) == 200
            assert tun.interrupt() == 130
    log = net.login.log.read_text()
    assert f"Accepted publickey for {net.laptop.user} from {sshnet.BASTION_INNER_IP}" in log
    assert "direct-tcpip" in net.bastion.log.read_text() or \
        f"Accepted publickey for {net.laptop.user}" in net.bastion.log.read_text()


@pytest.mark.parametrize(("login", "words"), [
    ("unknown-key", "is not known, so the connection was refused"),
    ("changed-key", "has CHANGED"),
])
def test_unknown_or_changed_host_key_is_refused(net: Net, desktop: dict[str, str], login: str,
                                                words: str) -> None:
    proc = net.laptop.run(str(desktop["session"]), "--login", login, *net.remote)
    assert proc.returncode == 2, proc.stderr
    assert words in proc.stderr and net.login.fingerprint() in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "ssh-keygen -R" in proc.stderr if login == "changed-key" else "answering yes" in \
        proc.stderr


@pytest.mark.parametrize(("case", "code", "words"), [
    ("unknown session", 2, "no session 'zzzzzz'"),
    ("refused port", 3, f"cannot reach {'{user}'}@{LOGIN_IP} port 2299: Connection refused"),
    ("no route", 3, "Network is unreachable"),
    ("wrong key", 2, "refused the login"),
    ("hpcdesk missing", 3, "hpcdesk is not installed on the login node"),
])
def test_bad_input_is_one_clear_error(net: Net, desktop: dict[str, str], case: str, code: int,
                                      words: str) -> None:
    sid = str(desktop["session"])
    args = {
        "unknown session": ("zzzzzz", "--login", "login", *net.remote),
        "refused port": (sid, "--login", f"{LOGIN_IP}:2299", *net.remote),
        "no route": (sid, "--login", "10.77.0.11", *net.remote),
        "wrong key": (sid, "--login", "wrong-key", *net.remote),
        "hpcdesk missing": (sid, "--login", "login", "--remote-command", "/nonexistent/hpcdesk"),
    }[case]
    proc = net.laptop.run(*args)
    assert proc.returncode == code, proc.stderr
    assert words.replace("{user}", net.laptop.user) in proc.stderr
    assert proc.stderr.startswith("hpcdesk: ") and "Traceback" not in proc.stderr


def test_local_port_in_use(net: Net, desktop: dict[str, str]) -> None:
    holder = subprocess.Popen([*sshnet.in_ns(NS_LAPTOP), "python3", "-c",
                               "import socket,sys; s=socket.create_server(('127.0.0.1', 0)); "
                               "print(s.getsockname()[1], flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        port = holder.stdout.readline().strip()
        proc = net.laptop.run(str(desktop["session"]), "--login", "login", "--local-port", port,
                              *net.remote)
        assert proc.returncode == 2, proc.stderr
        assert f"local port {port} (web) is already in use" in proc.stderr
        assert "connecting" not in proc.stderr  # refused before any SSH
        assert "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait(10)


def test_keys_from_ssh_agent(net: Net, desktop: dict[str, str]) -> None:
    """`login-agent` names no usable key file: only the agent's key can log in."""
    sock = net.laptop.home / "agent.sock"
    agent = subprocess.Popen(net.laptop.as_user("ssh-agent", "-D", "-a", str(sock)),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        env = {"SSH_AUTH_SOCK": str(sock)}
        for _ in range(20):  # the socket file appears a moment before the agent listens on it
            add = subprocess.run(net.laptop.as_user("ssh-add", str(net.laptop.agent_key),
                                                    env=env),
                                 capture_output=True, text=True, timeout=30)
            if add.returncode == 0 or "agent" not in add.stderr.lower():
                break
            time.sleep(0.2)
        assert add.returncode == 0, add.stderr
        with tunnel(net, str(desktop["session"]), "--login", "login-agent", "--json",
                    env=env) as tun:
            info = tun.ready(timeout=120)
            assert laptop_http(str(info["url"]), str(info["user"]),
                               str(info["password"])) == 200
            assert tun.interrupt() == 130
        # Without the agent the same host has no key to offer.
        proc = net.laptop.run(str(desktop["session"]), "--login", "login-agent", *net.remote)
        assert proc.returncode == 2 and "refused the login" in proc.stderr, proc.stderr
    finally:
        agent.terminate()
        agent.wait(10)


def test_silently_dead_path_is_noticed_and_reconnected(net: Net,
                                                       desktop: dict[str, str]) -> None:
    """The laptop's link goes away without a word (no FIN, no RST: a laptop that slept or
    changed networks). The tunnel notices by itself, retries, and recovers once the
    network is back."""
    with tunnel(net, str(desktop["session"]), "--login", "login", "--json") as tun:
        info = tun.ready(timeout=120)
        link_down = [*sshnet.in_ns(NS_LAPTOP), "ip", "link", "set", f"{sshnet.TAG}-lap-in"]
        sshnet.sh(*link_down, "down")
        try:
            tun.wait_for("has not answered", timeout=90)
            tun.wait_for("still reconnecting", timeout=60)
        finally:
            sshnet.sh(*link_down, "up")
        tun.wait_for("reconnected after", timeout=120)
        assert laptop_http(str(info["url"]), str(info["user"]), str(info["password"])) == 200
        assert tun.interrupt() == 130


def test_tunnel_ends_when_the_desktop_ends(user: User, net: Net) -> None:
    data = user.json("submit", *SITE, "--connect", "tunnel", timeout=240)
    session = str(data["session"])
    try:
        with tunnel(net, session, "--login", "login", "--json") as tun:
            info = tun.ready(timeout=120)
            assert user.json("cancel", session, *SITE)["state"] == "cancelled"
            # The browser's next request finds the desktop gone; the tunnel looks and ends.
            with contextlib.suppress(AssertionError, ValueError):
                laptop_http(str(info["url"]), str(info["user"]), str(info["password"]))
            assert tun.wait(120) == 0
            assert re.search(f"session {session} is cancelled .*; closing the tunnel",
                             tun.stderr), tun.stderr
    finally:
        user.run("cancel", session, *SITE, timeout=90)


def test_tunnel_to_an_ood_started_desktop(user: User, net: Net, tmp_path: Path) -> None:
    """A desktop started from the Open OnDemand app (the real ood_core's batch script) is an
    ordinary session: the tunnel finds it by id and opens it with its fragment token."""
    require("ruby", package="ruby")
    app = oodharness.generate_app(user, user.home / "ood-apps" / "tunnel")
    job, _work, conn = oodharness.start_session(user, app, oodharness.copy_ood_core(user))
    try:
        sid, token = str(conn["hpcdesk_session"]), str(conn["token"])
        place_window(user, sid, "#13a86b", "+0+0")
        with tunnel(net, sid, "--login", "login", "--json") as tun:
            info = tun.ready()
            assert info["session"] == sid and not info["password"]
            assert re.fullmatch(rf"https?://127\.0\.0\.1:\d+/#token={re.escape(token)}",
                                str(info["url"]))
            with browser.Chromium(NS_LAPTOP) as chrome:
                chrome.open(str(info["url"]))
                shot = tmp_path / "ood-tunnel.png"
                assert chrome.wait_for(shot, shows(GREEN)), f"no desktop: {shot}"
    finally:
        sshnet.sh("scancel", job, check=False)
