"""Ports and displays on a shared node: a port lease announces nothing (the real listener is
the claim, health.who_listens proves it); display claims are abstract names (locks.py), drawn
at random from a wide range, never blocked by files."""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import uuid
from pathlib import Path

import pytest

from hpcdesk.node.locks import try_claim
from hpcdesk.node.ports import PortLease


@pytest.fixture
def scope() -> str:
    """A claim scope of this test alone: parallel test runs on the machine never collide."""
    return f"hpcdesk-test-{uuid.uuid4().hex}"


def test_a_port_lease_announces_nothing_and_skips_listeners(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    """Row 1 of issue 19: a port claim visible to others (an abstract name in /proc/net/unix)
    told a neighbour which port to bind before the web UI did. A lease now opens no file
    and binds no name; a port somebody listens on is never handed out."""
    monkeypatch.chdir(tmp_path)
    busy = socket.create_server(("127.0.0.1", 0))
    taken = busy.getsockname()[1]
    unix_before = Path("/proc/net/unix").read_text().count("\n")
    fds_before = set(os.listdir("/proc/self/fd"))
    lease = PortLease("127.0.0.1", taken, taken + 1)
    try:
        port = lease.acquire()
        assert port == taken + 1 or port != taken
        assert set(os.listdir("/proc/self/fd")) == fds_before  # nothing held open
        assert f"port-{port}" not in Path("/proc/net/unix").read_text()
        assert abs(Path("/proc/net/unix").read_text().count("\n") - unix_before) < 50
        with pytest.raises(RuntimeError, match="no free port"):
            PortLease("127.0.0.1", taken, taken).acquire(attempts=5)
    finally:
        busy.close()


def test_a_lease_never_hands_out_a_port_twice_nor_a_refused_one() -> None:
    lease = PortLease("127.0.0.1", 20100, 20102)
    got = {lease.acquire() for _ in range(3)}
    assert got == {20100, 20101, 20102}
    with pytest.raises(RuntimeError, match="no free port"):
        lease.acquire(attempts=20)
    lease.refuse(20101)  # someone else listened there: never again
    lease.release(20100)
    assert lease.acquire() == 20100
    with pytest.raises(RuntimeError):
        lease.acquire(attempts=20)


def test_a_claim_dies_with_its_holder(scope: str) -> None:
    ctx = mp.get_context("fork")
    holder = ctx.Process(target=lambda: (try_claim("display-1", scope),
                                         os.kill(os.getpid(), 9)))
    holder.start()
    holder.join(10)
    assert holder.exitcode == -9
    claim = try_claim("display-1", scope)  # the killed agent left nothing behind
    assert claim is not None
    assert try_claim("display-1", scope) is None
    claim.close()


def _claim_display(scope: str, tmp: str, barrier: mp.synchronize.Barrier,
                   out: mp.queues.Queue[int], hold: mp.synchronize.Event) -> None:
    from hpcdesk.node.displays import DisplayLease

    lease = DisplayLease(Path(tmp), scope=scope, first=SPAN[0], last=SPAN[1])
    barrier.wait()
    out.put(lease.acquire())
    hold.wait(10)


SPAN = (9990, 9997)  # a narrow range, so that concurrent claimants really compete


@pytest.mark.reliability("D1 node-wide claims on a shared node",
                          "ports and displays claimed without any file another user owns or can block")
def test_concurrent_display_claims_are_distinct_skip_x_sockets_ignore_lock_files(
        tmp_path: Path, scope: str) -> None:
    """Distinct displays for concurrent claimants; a display with an X socket (abstract, in
    this network namespace) is skipped; lock files in /tmp (another user's, outliving their
    job) are not: containers have their own /tmp, and they cost nothing to create."""
    fake_tmp = tmp_path / "tmp"
    fake_tmp.mkdir()
    for n in range(SPAN[0], SPAN[1] + 1):
        (fake_tmp / f".X{n}-lock").write_text("999999")  # a squatter's files, every number
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(f"\0/tmp/.X11-unix/X{SPAN[0] + 1}")  # a live X socket on one number
    n = 6
    ctx = mp.get_context("fork")
    barrier, out, hold = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_display, args=(scope, str(fake_tmp), barrier, out, hold))
             for _ in range(n)]
    try:
        for p in procs:
            p.start()
        got = sorted(out.get(timeout=20) for _ in range(n))
    finally:
        hold.set()
        for p in procs:
            p.join(10)
        server.close()
    assert len(set(got)) == n
    assert SPAN[0] + 1 not in got
    assert all(SPAN[0] <= g <= SPAN[1] for g in got)


def test_squatted_display_names_cost_a_retry(scope: str) -> None:
    """Issue 19 row 3: 980 names held by one process block nothing: the lease draws from a
    wide range and steps over names held by others."""
    from hpcdesk.node.displays import FIRST, DisplayLease

    squat = [try_claim(f"display-{n}", scope) for n in range(FIRST, FIRST + 980)]
    try:
        lease = DisplayLease(scope=scope)
        got = lease.acquire()
        assert not FIRST <= got < FIRST + 980
        lease.release()
    finally:
        for claim in squat:
            if claim is not None:
                claim.close()
