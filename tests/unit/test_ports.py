"""Ports and displays: many agents claiming at the same moment never get the same one, and a
claim depends on no file (locks.py: abstract Unix sockets in the network namespace)."""

from __future__ import annotations

import multiprocessing as mp
import os
import uuid
from pathlib import Path

import pytest

from hpcdesk.node.locks import try_claim
from hpcdesk.node.ports import PortLease


@pytest.fixture
def scope() -> str:
    """A claim scope of this test alone: parallel test runs on the machine never collide."""
    return f"hpcdesk-test-{uuid.uuid4().hex}"


def _claim(scope: str, barrier: mp.synchronize.Barrier, out: mp.queues.Queue[int],
           hold: mp.synchronize.Event) -> None:
    lease = PortLease("127.0.0.1", 20000, 20007, scope=scope)
    barrier.wait()
    out.put(lease.acquire())
    hold.wait(10)  # keep the claim, like a running desktop does


def test_concurrent_claims_in_a_small_range_are_distinct(scope: str) -> None:
    n = 8  # as many claimants as ports: every one must get a different port
    ctx = mp.get_context("fork")
    barrier, out, hold = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim, args=(scope, barrier, out, hold)) for _ in range(n)]
    for p in procs:
        p.start()
    ports = [out.get(timeout=20) for _ in range(n)]
    hold.set()
    for p in procs:
        p.join(10)
    assert sorted(ports) == list(range(20000, 20008))


def test_release_and_reuse(scope: str) -> None:
    a = PortLease("127.0.0.1", 20100, 20100, scope=scope)
    port = a.acquire()
    b = PortLease("127.0.0.1", 20100, 20100, scope=scope)
    with pytest.raises(RuntimeError, match="no free port"):
        b.acquire(attempts=5)
    a.release()
    assert b.acquire() == port
    b.release()


def test_a_claim_dies_with_its_holder(scope: str) -> None:
    ctx = mp.get_context("fork")
    holder = ctx.Process(target=lambda: (try_claim("port-1", scope), os.kill(os.getpid(), 9)))
    holder.start()
    holder.join(10)
    assert holder.exitcode == -9
    claim = try_claim("port-1", scope)  # the killed agent left nothing behind
    assert claim is not None
    assert try_claim("port-1", scope) is None
    claim.close()


@pytest.mark.reliability("D1 node-wide claims on a shared node",
                          "ports and displays claimed without any file another user owns or can block")
def test_claims_use_no_file(scope: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim opens no file (so no file another user owns or pre-creates can block it) and
    is a name in the network namespace while held (tests/cluster/test_shared_nodes.py runs
    two users against a hostile lock directory)."""
    monkeypatch.chdir(tmp_path)
    before = set(os.listdir("/proc/self/fd"))
    lease = PortLease("127.0.0.1", scope=scope)
    port = lease.acquire()
    assert 1024 < port < 65536
    fds = set(os.listdir("/proc/self/fd")) - before
    targets = {os.readlink(f"/proc/self/fd/{fd}") for fd in fds if os.path.exists(
        f"/proc/self/fd/{fd}")}
    assert all(t.startswith("socket:") for t in targets), targets
    names = Path("/proc/net/unix").read_text()
    assert f"@{scope}/port-{port}" in names
    lease.release()
    assert f"@{scope}/port-{port}" not in Path("/proc/net/unix").read_text()


def _claim_display(scope: str, tmp: str, barrier: mp.synchronize.Barrier,
                   out: mp.queues.Queue[int], hold: mp.synchronize.Event) -> None:
    from hpcdesk.node.displays import DisplayLease

    lease = DisplayLease(Path(tmp), scope=scope)
    barrier.wait()
    out.put(lease.acquire())
    hold.wait(10)


def test_concurrent_display_claims_are_distinct_and_skip_used(tmp_path: Path, scope: str) -> None:
    from hpcdesk.node.displays import FIRST

    fake_tmp = tmp_path / "tmp"
    (fake_tmp / ".X11-unix").mkdir(parents=True)
    (fake_tmp / f".X{FIRST}-lock").write_text("123")          # a running server
    (fake_tmp / ".X11-unix" / f"X{FIRST + 2}").write_text("")  # a socket without lock
    n = 6
    ctx = mp.get_context("fork")
    barrier, out, hold = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_display, args=(scope, str(fake_tmp), barrier, out, hold))
             for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=20) for _ in range(n))
    hold.set()
    for p in procs:
        p.join(10)
    assert len(set(got)) == n
    assert FIRST not in got and FIRST + 2 not in got
