"""`hpcdesk doctor`'s TURN allocation, against a real coturn on loopback."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.ports import free_port
from hpcdesk.connect.probe import ProbeError, allocate
from hpcdesk.connect.turn import hmac_credentials
from tests.tooling import require

SECRET = "probe-secret"


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    require("turnserver", package="coturn")
    d = tmp_path_factory.mktemp("coturn")
    port = free_port()
    conf = d / "turnserver.conf"
    conf.write_text("\n".join([
        "listening-ip=127.0.0.1", f"listening-port={port}", "relay-ip=127.0.0.1",
        "min-port=52100", "max-port=52115", "use-auth-secret", f"static-auth-secret={SECRET}",
        "realm=probe.test", "no-cli", "no-tls", "no-dtls", f"log-file={d}/turn.log",
        "simple-log", f"pidfile={d}/turn.pid", f"userdb={d}/turndb"]) + "\n")
    proc = subprocess.Popen(["turnserver", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, Path(d / "turn.log").read_text()
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        assert time.monotonic() < deadline, "coturn did not start"
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_allocation_with_minted_credentials(coturn: int, transport: str) -> None:
    user, password = hmac_credentials(SECRET, "alice", 600, time.time())
    got = allocate(f"turn:127.0.0.1:{coturn}?transport={transport}", user, password)
    assert got.relayed.startswith("127.0.0.1:")
    assert 52100 <= int(got.relayed.rsplit(":", 1)[1]) <= 52115
    assert 0 < got.rtt_ms < 5000


@pytest.mark.parametrize(("secret", "lifetime"), [("wrong", 600), (SECRET, -60)])
def test_refused_credentials(coturn: int, secret: str, lifetime: int) -> None:
    user, password = hmac_credentials(secret, "alice", lifetime, time.time())
    with pytest.raises(ProbeError, match="refused the allocation: 401"):
        allocate(f"turn:127.0.0.1:{coturn}?transport=tcp", user, password)


def test_nothing_listening() -> None:
    port = free_port()
    with pytest.raises(ProbeError, match=f"cannot reach 127.0.0.1:{port}/tcp"):
        allocate(f"turn:127.0.0.1:{port}?transport=tcp", "u", "p", timeout=2)
    with pytest.raises(ProbeError, match=f"nothing answers on 127.0.0.1:{port}/udp"):
        allocate(f"turn:127.0.0.1:{port}?transport=udp", "u", "p", timeout=1.5)


def test_silent_udp_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        with pytest.raises(ProbeError, match=f"no answer from 127.0.0.1:{port}/udp within 2s"):
            allocate(f"turn:127.0.0.1:{port}?transport=udp", "u", "p", timeout=1.5)
