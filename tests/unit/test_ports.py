"""Ports: many agents claiming at the same moment never get the same port."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

from hpcdesk.node.ports import PortLease


def _claim(lock_dir: str, barrier: mp.synchronize.Barrier, out: mp.queues.Queue[int],
           hold: mp.synchronize.Event) -> None:
    lease = PortLease(Path(lock_dir), "127.0.0.1", 20000, 20007)
    barrier.wait()
    out.put(lease.acquire())
    hold.wait(10)  # keep the lock, like a running desktop does


def test_concurrent_claims_in_a_small_range_are_distinct(tmp_path: Path) -> None:
    n = 8  # as many claimants as ports: every one must get a different port
    ctx = mp.get_context("fork")
    barrier, out, hold = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), barrier, out, hold))
             for _ in range(n)]
    for p in procs:
        p.start()
    ports = [out.get(timeout=20) for _ in range(n)]
    hold.set()
    for p in procs:
        p.join(10)
    assert sorted(ports) == list(range(20000, 20008))


def test_release_and_reuse(tmp_path: Path) -> None:
    a = PortLease(tmp_path, "127.0.0.1", 20100, 20100)
    port = a.acquire()
    b = PortLease(tmp_path, "127.0.0.1", 20100, 20100)
    try:
        b.acquire(attempts=5)
        raise AssertionError("a held port was handed out twice")
    except RuntimeError as exc:
        assert "no free port" in str(exc)
    a.release()
    assert b.acquire() == port


def test_kernel_chosen_port(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lease = PortLease(lock_dir, "127.0.0.1")
    port = lease.acquire()
    assert 1024 < port < 65536
    assert lock_dir.stat().st_mode & 0o7777 == 0o1777  # shared by all users' agents, sticky
    assert (lock_dir / f"port-{port}.lock").exists()


def _claim_display(lock_dir: str, tmp: str, barrier: mp.synchronize.Barrier,
                   out: mp.queues.Queue[int], hold: mp.synchronize.Event) -> None:
    from hpcdesk.node.displays import DisplayLease

    lease = DisplayLease(Path(lock_dir), Path(tmp))
    barrier.wait()
    out.put(lease.acquire())
    hold.wait(10)


def test_concurrent_display_claims_are_distinct_and_skip_used(tmp_path: Path) -> None:
    from hpcdesk.node.displays import FIRST

    fake_tmp = tmp_path / "tmp"
    (fake_tmp / ".X11-unix").mkdir(parents=True)
    (fake_tmp / f".X{FIRST}-lock").write_text("123")          # a running server
    (fake_tmp / ".X11-unix" / f"X{FIRST + 2}").write_text("")  # a socket without lock
    n = 6
    ctx = mp.get_context("fork")
    barrier, out, hold = ctx.Barrier(n), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_claim_display,
                         args=(str(tmp_path / "locks"), str(fake_tmp), barrier, out, hold))
             for _ in range(n)]
    for p in procs:
        p.start()
    got = sorted(out.get(timeout=20) for _ in range(n))
    hold.set()
    for p in procs:
        p.join(10)
    assert len(set(got)) == n
    assert FIRST not in got and FIRST + 2 not in got
