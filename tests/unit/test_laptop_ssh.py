"""`hpcdesk tunnel` against FakeLoginNode (a paramiko SSH server in this process): host keys,
keys and keyboard-interactive with several questions, remote hpcdesk answers and errors,
and the forwards, including the webrtc TURN port at the same number on both ends."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from fake_login_node import FakeLoginNode, Policy, stop_accepting

from hpcdesk.errors import EXIT_USAGE, Unreachable
from hpcdesk.laptop import link
from hpcdesk.laptop.auth import Authenticator, AuthFailed
from hpcdesk.laptop.endpoint import Endpoint
from hpcdesk.laptop.forward import Forward, PortInUse
from hpcdesk.laptop.hostkeys import HostKeyRefused, fingerprint
from hpcdesk.laptop.remote import RemoteError, RemoteHpcdesk
from hpcdesk.laptop.target import Hop
from hpcdesk.laptop.tunnel import Options, Tunnel, run


class Answers:
    """A prompter with prepared answers, recording what it was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, bool]] = []
        self.told: list[str] = []

    def ask(self, prompt: str, echo: bool, asker: str = "the server") -> str:
        self.asked.append((prompt, echo))
        return self.answers.pop(0)

    def tell(self, text: str) -> None:
        self.told.append(text)

    def restore(self) -> None:
        pass


@pytest.fixture
def client_key(tmp_path: Path) -> tuple[paramiko.PKey, Path]:
    key = paramiko.ECDSAKey.generate()
    path = tmp_path / "id_ecdsa"
    key.write_private_key_file(str(path))
    return key, path


@pytest.fixture
def no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def start(policy: Policy) -> FakeLoginNode:
    return FakeLoginNode(policy)


@pytest.fixture
def servers() -> Iterator[list[FakeLoginNode]]:
    made: list[FakeLoginNode] = []
    yield made
    for s in made:
        s.close()


def hop_for(server: FakeLoginNode, tmp_path: Path, key_path: Path | None,
            known: str | None = None) -> Hop:
    kh = tmp_path / "known_hosts"
    kh.write_text(server.known_hosts_line() if known is None else known)
    return Hop(name="login", hostname="127.0.0.1", port=server.port, user="alice",
               identity_files=(str(key_path),) if key_path else (str(tmp_path / "none"),),
               known_hosts_files=(str(kh),))


def test_key_login_and_remote_json(tmp_path: Path, client_key: tuple[paramiko.PKey, Path],
                                   servers: list[FakeLoginNode], no_agent: None) -> None:
    key, path = client_key
    answer = {"session": "abc", "state": "ready"}
    srv = start(Policy(keys=[key], execute=lambda cmd: (0, json.dumps(answer), "")))
    servers.append(srv)
    ln = link.connect([hop_for(srv, tmp_path, path)], Authenticator(Answers()))
    try:
        remote = RemoteHpcdesk(lambda: ln.transport, "login", "/opt/x y/hpcdesk", "dev site")
        assert remote.json(["status", "a'b"]) == answer
        assert srv.policy.commands == ["/opt/x y/hpcdesk status 'a'\"'\"'b' --json --site "
                                       "'dev site'"]
    finally:
        ln.close()


def test_unknown_host_key_is_refused_with_fingerprint(
        tmp_path: Path, client_key: tuple[paramiko.PKey, Path], servers: list[FakeLoginNode],
        no_agent: None) -> None:
    srv = start(Policy(keys=[client_key[0]]))
    servers.append(srv)
    with pytest.raises(HostKeyRefused) as err:
        link.connect([hop_for(srv, tmp_path, client_key[1], known="")], Authenticator(Answers()))
    text = str(err.value)
    assert "not known" in text and fingerprint(srv.host_key) in text
    assert f"ssh -p {srv.port} alice@127.0.0.1" in text
    assert err.value.exit_code == EXIT_USAGE


def test_changed_host_key_is_refused(tmp_path: Path, client_key: tuple[paramiko.PKey, Path],
                                     servers: list[FakeLoginNode], no_agent: None) -> None:
    srv = start(Policy(keys=[client_key[0]]))
    servers.append(srv)
    other = paramiko.ECDSAKey.generate()
    known = f"[127.0.0.1]:{srv.port} {other.get_name()} {other.get_base64()}\n"
    with pytest.raises(HostKeyRefused) as err:
        link.connect([hop_for(srv, tmp_path, client_key[1], known=known)],
                     Authenticator(Answers()))
    text = str(err.value)
    assert "CHANGED" in text and fingerprint(other) in text and fingerprint(srv.host_key) in text
    assert f"ssh-keygen -R '[127.0.0.1]:{srv.port}'" in text


def test_hashed_known_hosts_entry(tmp_path: Path, client_key: tuple[paramiko.PKey, Path],
                                  servers: list[FakeLoginNode], no_agent: None) -> None:
    srv = start(Policy(keys=[client_key[0]]))
    servers.append(srv)
    hashed = paramiko.HostKeys.hash_host(f"[127.0.0.1]:{srv.port}")
    known = f"{hashed} {srv.host_key.get_name()} {srv.host_key.get_base64()}\n"
    link.connect([hop_for(srv, tmp_path, client_key[1], known=known)],
                 Authenticator(Answers())).close()


def test_two_factors_with_several_questions(
        tmp_path: Path, client_key: tuple[paramiko.PKey, Path], servers: list[FakeLoginNode],
        no_agent: None) -> None:
    questions = [("Password: ", False), ("One-time code: ", False), ("Project: ", True)]
    srv = start(Policy(keys=[client_key[0]], methods=("publickey", "keyboard-interactive"),
                       questions=questions, answers=["pw", "123456", "astro"]))
    servers.append(srv)
    prompter = Answers("pw", "123456", "astro")
    link.connect([hop_for(srv, tmp_path, client_key[1])], Authenticator(prompter)).close()
    assert prompter.asked == questions
    assert "Answer the questions." in prompter.told


def test_wrong_code_is_a_clear_error(tmp_path: Path, servers: list[FakeLoginNode],
                                     no_agent: None) -> None:
    srv = start(Policy(methods=("keyboard-interactive",), questions=[("Code: ", False)],
                       answers=["111111"]))
    servers.append(srv)
    with pytest.raises(AuthFailed, match="refused the answers") as err:
        link.connect([hop_for(srv, tmp_path, None)], Authenticator(Answers("999999")))
    assert err.value.exit_code == EXIT_USAGE


def test_no_usable_key_names_what_was_tried(tmp_path: Path, servers: list[FakeLoginNode],
                                            client_key: tuple[paramiko.PKey, Path],
                                            no_agent: None) -> None:
    srv = start(Policy(keys=[paramiko.ECDSAKey.generate()]))
    servers.append(srv)
    with pytest.raises(AuthFailed, match=r"refused the login \(tried: .*id_ecdsa"):
        link.connect([hop_for(srv, tmp_path, client_key[1])], Authenticator(Answers()))


def test_encrypted_key_asks_passphrase_once(tmp_path: Path, servers: list[FakeLoginNode],
                                            no_agent: None) -> None:
    key = paramiko.ECDSAKey.generate()
    path = tmp_path / "id_enc"
    key.write_private_key_file(str(path), password="s3cret")
    srv = start(Policy(keys=[key]))
    servers.append(srv)
    prompter = Answers("wrong", "s3cret")
    auth = Authenticator(prompter)
    hop = hop_for(srv, tmp_path, path)
    link.connect([hop], auth).close()
    link.connect([hop], auth).close()  # a reconnect: the key is in memory now
    assert [p for p, _ in prompter.asked] == [f"Enter passphrase for key '{path}': "] * 2
    assert prompter.told == ["Bad passphrase, try again."]


def test_passphrase_without_a_terminal_is_not_the_servers_question(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The passphrase of a local key is hpcdesk's own question, asked before any server."""
    from hpcdesk.laptop.auth import TerminalPrompter

    path = tmp_path / "id_enc"
    paramiko.ECDSAKey.generate().write_private_key_file(str(path), password="s3cret")
    monkeypatch.setattr("sys.stdin", None)  # no terminal (a script, a service)
    with pytest.raises(AuthFailed) as failed:
        Authenticator(TerminalPrompter()).key_file(str(path))
    said = str(failed.value)
    assert "server" not in said, said
    assert "unlock your key" in said and f"Enter passphrase for key '{path}'" in said
    assert "ssh-add" in failed.value.hint


def test_unreachable_host(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        hop = Hop(name="login", hostname="127.0.0.1", port=port, user="alice")
        with pytest.raises(Unreachable, match=f"cannot reach alice@127.0.0.1 port {port}"):
            link.connect([hop], Authenticator(Answers()))


def test_proxyjump_through_a_jump_host(tmp_path: Path, client_key: tuple[paramiko.PKey, Path],
                                       servers: list[FakeLoginNode], no_agent: None) -> None:
    key, path = client_key
    bastion = start(Policy(keys=[key]))
    login = start(Policy(keys=[key], execute=lambda cmd: (0, '{"ok": true}', "")))
    servers.extend([bastion, login])
    kh = tmp_path / "known_hosts"
    kh.write_text(bastion.known_hosts_line() + login.known_hosts_line())
    hops = [Hop(name=n, hostname="127.0.0.1", port=s.port, user="alice",
                identity_files=(str(path),), known_hosts_files=(str(kh),))
            for n, s in (("bastion", bastion), ("login", login))]
    ln = link.connect(hops, Authenticator(Answers()))
    try:
        assert len(ln.transports) == 2
        assert RemoteHpcdesk(lambda: ln.transport, "login").json(["x"]) == {"ok": True}
        assert login.policy.commands and not bastion.policy.commands
    finally:
        ln.close()


@pytest.mark.parametrize(("code", "stderr", "kind", "exit_code", "words"), [
    (127, "bash: line 1: hpcdesk: command not found\n", Unreachable, 3,
     "hpcdesk is not installed on the login node login"),
    (2, "hpcdesk: error: no session 'zz' under /home/a/.hpcdesk/sessions\n  hint: `hpcdesk "
     "list` shows your sessions\n", RemoteError, 2, "on login: no session 'zz'"),
    (1, "hpcdesk: error: the desktop failed\n  Slurm state: FAILED\n", RemoteError, 1,
     "the desktop failed\n  Slurm state: FAILED"),
    (255, "Traceback (most recent call last):\nboom\n", RemoteError, 3, "on login: boom"),
])
def test_remote_errors(code: int, stderr: str, kind: type, exit_code: int, words: str) -> None:
    remote = RemoteHpcdesk(lambda: None, "login")  # type: ignore[arg-type,return-value]
    from hpcdesk.laptop.remote import Result

    err = remote.failure(Result(code, "", stderr))
    assert isinstance(err, kind)
    assert err.exit_code == exit_code
    assert words in str(err)
    if code == 2:
        assert err.hint == "`hpcdesk list` shows your sessions"


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUse, match=f"local port {port} .* already in use"):
            Forward(port, ("127.0.0.1", 1), lambda t: None, "web")


class NodeService:
    """A service on the "node" (127.0.0.2): answers tag + what it got, once per connection.
    close() stops its accept thread before the socket goes (fake_login_node.stop_accepting)."""

    def __init__(self, tag: bytes, port: int = 0) -> None:
        self.sock = socket.create_server(("127.0.0.2", port))
        self.tag = tag
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(self.tag + conn.recv(1024))

    def getsockname(self) -> tuple[str, int]:
        return self.sock.getsockname()  # type: ignore[no-any-return]

    def close(self) -> None:
        stop_accepting(self.sock, self.thread)


def node_service(tag: bytes, port: int = 0) -> NodeService:
    return NodeService(tag, port)


def roundtrip(port: int, data: bytes) -> bytes:
    # Generous: a reconnect (key exchange, auth) on a loaded 2-core machine can take seconds.
    with socket.create_connection(("127.0.0.1", port), timeout=60) as c:
        c.sendall(data)
        return c.recv(1024)


def test_webrtc_session_forwards_turn_port_at_the_same_number(
        tmp_path: Path, client_key: tuple[paramiko.PKey, Path], servers: list[FakeLoginNode],
        no_agent: None, capsys: pytest.CaptureFixture[str]) -> None:
    """A webrtc session with in-job TURN: its turn_port is forwarded to the same number here,
    next to the web port. The "node" is 127.0.0.2, reached through the fake login node."""
    web = node_service(b"web:")
    turn = node_service(b"turn:")
    turn_port = turn.getsockname()[1]
    status = {"session": "w1", "job_id": "77", "state": "ready", "node": "gpu01",
              "url": f"https://127.0.0.2:{web.getsockname()[1]}/", "user": "alice",
              "password": "pw", "transport": "webrtc", "turn_port": turn_port}

    def execute(cmd: str) -> tuple[int, str, str]:
        return (0, json.dumps(status), "") if " status " in f" {cmd} " else (2, "", "nope")

    srv = start(Policy(keys=[client_key[0]], execute=execute))
    servers.append(srv)
    tunnel = Tunnel([hop_for(srv, tmp_path, client_key[1])], Authenticator(Answers()),
                    "hpcdesk", None)
    result: list[int] = []
    thread = threading.Thread(
        target=lambda: result.append(run(Options(login="login", session="w1", json=True),
                                         tunnel)), daemon=True)
    thread.start()
    try:
        out = ""
        deadline = time.monotonic() + 90
        while not out.strip() and time.monotonic() < deadline and thread.is_alive():
            out += capsys.readouterr().out
            time.sleep(0.05)
        info = json.loads(out)
        assert (info["turn_port"], info["transport"]) == (turn_port, "webrtc")
        assert info["url"] == f"https://127.0.0.1:{info['local_port']}/"
        assert roundtrip(info["local_port"], b"hello") == b"web:hello"
        assert roundtrip(turn_port, b"relay") == b"turn:relay"
    finally:
        tunnel.stop()
        thread.join(60)
        web.close()
        turn.close()
    assert result == [0] and not thread.is_alive()
    assert srv.policy.commands[0] == "hpcdesk status w1 --json"


def test_submit_names_the_way_this_laptop_came(
        tmp_path: Path, client_key: tuple[paramiko.PKey, Path], servers: list[FakeLoginNode],
        no_agent: None, capsys: pytest.CaptureFixture[str]) -> None:
    """`tunnel --submit` says how to come back to the new session from this laptop: the
    --login it used and its jump host, never the login node's own host name."""
    web = node_service(b"web:")
    status = {"session": "s9", "job_id": "78", "state": "ready", "node": "gpu01",
              "url": f"http://127.0.0.2:{web.getsockname()[1]}/", "user": "al",
              "password": "pw"}

    def execute(cmd: str) -> tuple[int, str, str]:
        if " submit " in f" {cmd} ":  # what hpcdesk submit --json prints there
            return (0, json.dumps({"session": "s9", "job_id": "78", "state": "submitted",
                                   "laptop_command": "hpcdesk tunnel s9 --login "
                                   "al@login1.cluster.internal --open"}),
                    "hpcdesk: session s9, job 78 submitted\n")
        return 0, json.dumps(status), ""

    srv = start(Policy(keys=[client_key[0]], execute=execute))
    servers.append(srv)
    tunnel = Tunnel([hop_for(srv, tmp_path, client_key[1])], Authenticator(Answers()),
                    "hpcdesk", None)
    opts = Options(login="al@login", submit=["-t", "1:00:00"], json=True,
                   route_args=["--jump", "al@bastion.example"])
    thread = threading.Thread(target=run, args=(opts, tunnel), daemon=True)
    thread.start()
    try:
        out = err = ""
        deadline = time.monotonic() + 90
        while not out.strip() and time.monotonic() < deadline and thread.is_alive():
            got = capsys.readouterr()
            out, err = out + got.out, err + got.err
            time.sleep(0.05)
        assert json.loads(out)["session"] == "s9"
    finally:
        tunnel.stop()
        thread.join(60)
        web.close()
    err += capsys.readouterr().err
    assert "hpcdesk tunnel s9 --login al@login --jump al@bastion.example" in err, err
    assert "login1.cluster.internal" not in err


def test_websockets_session_forwards_the_web_port_only() -> None:
    ep = Endpoint.from_status({"session": "s", "url": "https://gpu01:41321/sub/?a=1#t=2",
                               "user": "al ice", "password": "p@ss", "turn_port": None})
    assert (ep.host, ep.port, ep.transport, ep.turn_port) == ("gpu01", 41321, "websockets",
                                                               None)
    # The password never goes into the URL (the browser's prompt asks for it).
    assert ep.local_url(5000) == "https://127.0.0.1:5000/sub/?a=1#t=2"


NETCAT = """
import socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := sys.stdin.buffer.read1(65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


def test_proxycommand_carries_the_connection(tmp_path: Path, servers: list[FakeLoginNode],
                                             client_key: tuple[paramiko.PKey, Path],
                                             no_agent: None) -> None:
    import sys
    from dataclasses import replace

    script = tmp_path / "nc.py"
    script.write_text(NETCAT)
    srv = start(Policy(keys=[client_key[0]], execute=lambda cmd: (0, '{"via": "proxy"}', "")))
    servers.append(srv)
    # An unroutable HostName: only the ProxyCommand knows the way.
    hop = replace(hop_for(srv, tmp_path, client_key[1]), hostname="192.0.2.1",
                  host_key_alias=f"[127.0.0.1]:{srv.port}",
                  proxy_command=f"{sys.executable} {script} 127.0.0.1 {srv.port}")
    ln = link.connect([hop], Authenticator(Answers()))
    try:
        assert RemoteHpcdesk(lambda: ln.transport, "login").json(["x"]) == {"via": "proxy"}
    finally:
        ln.close()


def test_reconnect_after_the_server_drops_the_link(
        tmp_path: Path, client_key: tuple[paramiko.PKey, Path], servers: list[FakeLoginNode],
        no_agent: None) -> None:
    """The listening port stays; a connection made while the link is down waits for the
    new link and then reaches the target."""
    web = node_service(b"web:")
    srv = start(Policy(keys=[client_key[0]]))
    servers.append(srv)
    tunnel = Tunnel([hop_for(srv, tmp_path, client_key[1])], Authenticator(Answers()),
                    "hpcdesk", None)
    fw = Forward(0, ("127.0.0.2", web.getsockname()[1]), tunnel.source, "web")
    fw.start()
    try:
        tunnel.connect()
        assert roundtrip(fw.port, b"one") == b"web:one"
        srv.drop_connections()
        deadline = time.monotonic() + 60
        while tunnel.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tunnel.alive()
        result: list[bytes] = []
        waiting = threading.Thread(target=lambda: result.append(roundtrip(fw.port, b"two")))
        waiting.start()  # connects while the link is down
        assert tunnel.reconnect() >= 0 and tunnel.reconnects == 1
        waiting.join(90)
        assert result == [b"web:two"]
    finally:
        fw.close()
        tunnel.close()
        web.close()


def test_closed_listeners_leave_no_thread_that_could_accept(
        servers: list[FakeLoginNode]) -> None:
    """A thread left in accept() on a closed listener goes on to accept on whatever socket
    reuses its descriptor number: once a later test's node service was served by this fake
    SSH server (the browser got "SSH-2.0-paramiko..." instead of the desktop). Closing stops
    the accept threads first, the fake login node's, the node service's and the tunnel's."""
    srv = start(Policy())
    web = node_service(b"web:")
    fw = Forward(0, web.getsockname(), lambda t: None, "web")
    fw.start()
    threads = [srv._thread, web.thread, fw.thread]
    srv.close()
    web.close()
    fw.close()
    assert [t for t in threads if t is not None and t.is_alive()] == []


def test_open_hands_the_browser_a_private_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpcdesk.laptop import tunnel as tunnel_mod

    opened: list[str] = []
    monkeypatch.setattr(tunnel_mod.webbrowser, "open", lambda uri: opened.append(uri) or True)
    ep = Endpoint.from_status({"session": "s", "url": "https://gpu01:4000/", "user": "al",
                               "password": "pw"})
    folder = tunnel_mod.open_in_browser(ep, 5000)
    try:
        page = folder / "open.html"
        assert opened == [page.as_uri()]  # no credentials on the browser's command line
        assert page.stat().st_mode & 0o777 == 0o600
        assert folder.stat().st_mode & 0o777 == 0o700
        text = page.read_text()  # the plain address: the browser's prompt asks the password
        assert "https://127.0.0.1:5000/" in text and "al:pw@" not in text
    finally:
        shutil.rmtree(folder)


def test_ssh_command_to_stop_a_session() -> None:
    from hpcdesk.laptop.tunnel import ssh_command

    bastion = Hop(name="gate", hostname="bastion.example", port=22, user="al")
    login = Hop(name="10.0.0.5", hostname="10.0.0.5", port=2222, user="al")
    tunnel = Tunnel([bastion, login], Authenticator(Answers()),
                    "module load hpcdesk && hpcdesk", "dev")
    line = ssh_command(tunnel, tunnel.remote.command_line(["cancel", "k3x9fq"]))
    assert line == ("ssh -J gate -p 2222 al@10.0.0.5 "
                    "'module load hpcdesk && hpcdesk cancel k3x9fq --site dev'")
    alias = Hop(name="cluster", hostname="login.example", port=2200, user="al")
    assert ssh_command(Tunnel([alias], Authenticator(Answers()), "hpcdesk", None), "x") == \
        "ssh cluster x"


def test_jump_host_that_cannot_reach_the_login_node(
        tmp_path: Path, client_key: tuple[paramiko.PKey, Path], servers: list[FakeLoginNode],
        no_agent: None) -> None:
    bastion = start(Policy(keys=[client_key[0]]))
    servers.append(bastion)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # nothing listens here
        port = closed.getsockname()[1]
        hops = [hop_for(bastion, tmp_path, client_key[1]),
                Hop(name="login", hostname="127.0.0.1", port=port, user="alice")]
        with pytest.raises(Unreachable, match=r"the jump host .* cannot reach alice@127.0.0.1 "
                           f"port {port} \\(login\\): Connect failed"):
            link.connect(hops, Authenticator(Answers()))


@pytest.mark.parametrize(("text", "expected"), [
    ('{"a": 1}\n', {"a": 1}),
    ('Welcome to the cluster!\n{ not json\nmodule: loaded hpcdesk\n{\n  "a": 1\n}\n', {"a": 1}),
    ("nothing here\n", None),
    ("[1, 2]\n", None),
])
def test_json_document_after_login_shell_noise(text: str, expected: object) -> None:
    from hpcdesk.laptop.remote import json_document

    assert json_document(text) == expected
