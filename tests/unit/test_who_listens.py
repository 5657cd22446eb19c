"""The readiness proof (issue 19 row 1): nothing is sent to a port before the socket that
listens there is proven to be an open file of the agent's own descendants (real sockets,
read from /proc)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from harness.ports import free_port
from hpcdesk.node import health

LISTEN = ("import socket, sys, time\n"
          "s = socket.create_server(('127.0.0.1', 0)); print(s.getsockname()[1], flush=True)\n"
          "time.sleep(60)\n")


def test_nobody_listens() -> None:
    proof = health.who_listens(free_port())
    assert proof.nobody and not proof.ours


def test_a_listener_in_our_process_tree_is_ours() -> None:
    child = subprocess.Popen([sys.executable, "-c", LISTEN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        proof = health.who_listens(port)  # root: this process, the child's parent
        assert proof.ours and not proof.foreign_uids
    finally:
        child.kill()
        child.wait()


def test_a_listener_outside_the_tree_is_foreign_even_for_the_same_user() -> None:
    """Another desktop of the same user that took the port first is not "our Selkies": the
    proof names its owner and the agent tries another port."""
    server = socket.create_server(("127.0.0.1", 0))
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        port = server.getsockname()[1]
        proof = health.who_listens(port, root=sleeper.pid)  # our socket is not the sleeper's
        assert not proof.ours and proof.foreign_uids == (os.getuid(),)
        assert f"uid {os.getuid()}" in proof.holders()
    finally:
        sleeper.kill()
        sleeper.wait()
        server.close()


def test_a_foreign_wildcard_listener_spoils_the_proof() -> None:
    """Both listen on the port (ours on one address, another on another): not proven."""
    ours = subprocess.Popen([sys.executable, "-c", LISTEN.replace("'127.0.0.1'", "'127.0.0.2'")],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert ours.stdout is not None
        port = int(ours.stdout.readline())
        other = socket.create_server(("127.0.0.1", port))
        try:
            proof = health.who_listens(port)
            assert not proof.ours and proof.foreign_uids
        finally:
            other.close()
        assert health.who_listens(port).ours
    finally:
        ours.kill()
        ours.wait()
