"""FakeLoginNode: a paramiko SSH *server* in a thread, standing in for a login node's sshd in
unit tests (the cluster tests use the real OpenSSH sshd). It speaks real SSH: host key,
publickey and keyboard-interactive authentication (optionally both, as two factors), exec
requests answered by a test function, and direct-tcpip channels to real local sockets.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paramiko

Exec = Callable[[str], tuple[int, str, str]]


@dataclass
class Policy:
    keys: Sequence[paramiko.PKey] = ()                 # accepted client keys
    questions: Sequence[tuple[str, bool]] = ()         # keyboard-interactive prompts
    answers: Sequence[str] = ()                        # the right answers
    methods: Sequence[str] = ("publickey",)            # all of these must succeed, in order
    execute: Exec = lambda cmd: (127, "", f"sh: 1: {cmd.split()[0]}: not found\n")
    commands: list[str] = field(default_factory=list)


class _Server(paramiko.ServerInterface):
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.done: list[str] = []
        self.destinations: dict[int, socket.socket] = {}
        self.execs: dict[int, tuple[threading.Event, list[str]]] = {}

    def exec_slot(self, chanid: int) -> tuple[threading.Event, list[str]]:
        return self.execs.setdefault(chanid, (threading.Event(), []))

    def _next(self) -> str:
        left = [m for m in self.policy.methods if m not in self.done]
        return ",".join(left)

    def get_allowed_auths(self, username: str) -> str:
        return self._next()

    def _passed(self, method: str) -> int:
        self.done.append(method)
        if all(m in self.done for m in self.policy.methods):
            return paramiko.common.AUTH_SUCCESSFUL
        return paramiko.common.AUTH_PARTIALLY_SUCCESSFUL

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if "publickey" in self.policy.methods and any(
                k.asbytes() == key.asbytes() for k in self.policy.keys):
            return self._passed("publickey")
        return paramiko.common.AUTH_FAILED

    def check_auth_interactive(self, username: str, submethods: str) -> object:
        if "keyboard-interactive" not in self.policy.methods:
            return paramiko.common.AUTH_FAILED
        query = paramiko.InteractiveQuery("hpcdesk test", "Answer the questions.")
        for prompt, echo in self.policy.questions:
            query.add_prompt(prompt, echo)
        return query

    def check_auth_interactive_response(self, responses: Sequence[str]) -> int:
        if list(responses) == list(self.policy.answers):
            return self._passed("keyboard-interactive")
        return paramiko.common.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        return paramiko.common.OPEN_SUCCEEDED if kind == "session" else \
            paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple[str, int],
                                           destination: tuple[str, int]) -> int:
        try:  # as sshd does: connect first, refuse the channel if that fails
            self.destinations[chanid] = socket.create_connection(destination, timeout=5)
        except OSError:
            return paramiko.common.OPEN_FAILED_CONNECT_FAILED
        return paramiko.common.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        event, box = self.exec_slot(channel.get_id())
        box.append(command.decode())
        event.set()
        return True


class FakeLoginNode:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.host_key = paramiko.ECDSAKey.generate()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.get_name()} {self.host_key.get_base64()}\n"

    def _accept(self) -> None:
        while not self._stop:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        t = paramiko.Transport(sock)
        t.add_server_key(self.host_key)
        server = _Server(self.policy)
        self.transports.append(t)
        try:
            t.start_server(server=server)
        except (paramiko.SSHException, EOFError, OSError):
            return
        while t.is_active():
            chan = t.accept(0.5)
            if chan is None:
                continue
            dest = server.destinations.pop(chan.get_id(), None)
            if dest is not None:
                threading.Thread(target=pump, args=(dest, chan), daemon=True).start()
            else:
                threading.Thread(target=self._exec, args=(chan, server), daemon=True).start()

    def _exec(self, chan: paramiko.Channel, server: _Server) -> None:
        event, box = server.exec_slot(chan.get_id())
        if not event.wait(10):
            chan.close()
            return
        command = box[0]
        self.policy.commands.append(command)
        code, out, err = self.policy.execute(command)
        if err:
            chan.sendall_stderr(err.encode())
        if out:
            chan.sendall(out.encode())
        chan.send_exit_status(code)  # the client closes the channel once it has read this

    def drop_connections(self) -> None:
        for t in self.transports:
            with contextlib.suppress(Exception):
                t.close()

    def close(self) -> None:
        """Stop accepting, then close. The accept thread must have ended before the listening
        socket is closed: a thread still in (or entering) accept() would go on to accept on
        whatever socket the next test opens under the same file descriptor number (a later
        test's "node" service once got this server's SSH banner that way)."""
        self._stop = True
        stop_accepting(self.listener, self._thread)
        self.drop_connections()


def stop_accepting(listener: socket.socket, thread: threading.Thread) -> None:
    """Wake the thread blocked in listener.accept() (shutdown makes it fail at once), wait
    for it to end, and only then close the listener and free its descriptor number."""
    with contextlib.suppress(OSError):
        listener.shutdown(socket.SHUT_RDWR)
    thread.join(10)
    assert not thread.is_alive(), "the accept thread did not stop"
    listener.close()


def pump(a: socket.socket, chan: paramiko.Channel) -> None:
    """Copy bytes both ways until either side closes."""
    try:
        while True:
            r, _, _ = select.select([a, chan], [], [], 1.0)
            if a in r:
                data = a.recv(16384)
                if not data:
                    break
                chan.sendall(data)
            if chan in r:
                data = chan.recv(16384)
                if not data:
                    break
                a.sendall(data)
    except OSError:
        pass
    finally:
        chan.close()
        a.close()
