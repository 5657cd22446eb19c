"""The login-side waiter with a FAKE scheduler (records queries; the real one is tested on the
dev cluster): backoff, 'unknown' is not failure, push readiness needs no scheduler query."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcdesk.files import write_json
from hpcdesk.login.waiting import DesktopFailed, Progress, Waiter
from hpcdesk.notify import Listener, Notifier
from hpcdesk.scheduler import JobInfo, JobRef, JobState
from hpcdesk.schema import TimeoutsConfig
from hpcdesk.session import Session


class FakeScheduler:
    name = "fake"

    def __init__(self, states: list[JobState]) -> None:
        self.states = states
        self.queries = 0

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        return JobRef("1")

    def query(self, jobs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
        self.queries += 1
        state = self.states[min(self.queries - 1, len(self.states) - 1)]
        return {j: JobInfo(j, state, reason="Priority", nodes="n1") for j in jobs}

    def cancel(self, job: JobRef) -> None:
        pass

    def exit_code(self, job: JobRef) -> str:
        return ""


def make(tmp_path: Path, sched: FakeScheduler, **t: float) -> tuple[Waiter, list[str]]:
    seen: list[str] = []
    timeouts = TimeoutsConfig(start=int(t.get("start", 30)), queue=int(t.get("queue", 0)),
                              poll_min=t.get("poll_min", 0.2), poll_max=t.get("poll_max", 1.0))
    w = Waiter(Session(tmp_path), sched, JobRef("1"), timeouts,
               Progress(lambda stage, detail: seen.append(stage)))
    return w, seen


def test_ready_by_push_without_any_scheduler_query(tmp_path: Path) -> None:
    sched = FakeScheduler([JobState.PENDING])
    listener = Listener(tmp_path, tmp_path.name, "127.0.0.1")
    # Polls fall on wall-clock multiples of the interval, at least a tenth of it away: with
    # 600 s the first possible poll is a minute off. The agent has reported before the waiter
    # starts (its events wait in the listener's backlog), so nothing here races a clock.
    w, seen = make(tmp_path, sched, poll_min=600.0, poll_max=600.0)
    w.listener = listener
    n = Notifier(tmp_path)
    n.send({"phase": "launching", "detail": "x", "node": "n1"})
    # As the node agent does: connection.json (the credentials) first, then "ready".
    write_json(tmp_path / "connection.json", {"url": "http://n1:1/", "password": "pw"})
    n.send({"phase": "ready", "detail": "desktop ready", "node": "n1"})
    conn = w.wait()
    listener.close()
    assert (conn.url, conn.password) == ("http://n1:1/", "pw")
    assert sched.queries == 0 and "launching" in seen


def test_backoff_while_pending_then_failure(tmp_path: Path) -> None:
    sched = FakeScheduler([JobState.PENDING] * 6 + [JobState.UNKNOWN] * 2 + [JobState.FAILED])
    w, seen = make(tmp_path, sched, poll_min=0.05, poll_max=0.2)
    with pytest.raises(DesktopFailed, match=r"ended \(failed\)"):
        w.wait()
    assert sched.queries == 9
    assert "queued" in seen and "unknown" in seen  # unknown kept waiting


def test_node_json_fallback_and_failure_reason(tmp_path: Path) -> None:
    sched = FakeScheduler([JobState.RUNNING])
    w, _ = make(tmp_path, sched, poll_min=5.0)
    write_json(tmp_path / "node.json", {"phase": "failed", "node": "n1",
                                        "reason": "Xorg exited (exit code 1)"})
    with pytest.raises(DesktopFailed, match="Xorg exited"):
        w.wait()
    write_json(tmp_path / "node.json", {"phase": "ready", "node": "n1"})
    write_json(tmp_path / "connection.json", {"url": "http://n1:2/"})
    w2, _ = make(tmp_path, sched, poll_min=5.0)
    assert w2.wait().url == "http://n1:2/"
    assert sched.queries == 0


def test_queue_timeout(tmp_path: Path) -> None:
    from hpcdesk.errors import WaitTimeout

    w, _ = make(tmp_path, FakeScheduler([JobState.PENDING]), poll_min=0.2, queue=1)
    with pytest.raises(WaitTimeout, match="in the queue"):
        w.wait()


def test_poll_instants_are_aligned_to_the_wall_clock() -> None:
    from hpcdesk.login.waiting import aligned_delay

    assert aligned_delay(4.0, now=1000.5) == pytest.approx(3.5)
    assert aligned_delay(4.0, now=1003.9) == pytest.approx(4.1)   # too close: the next one
    # Clients on different steps of the ladder meet: every 8 s instant is a 4 s instant.
    for now in (1000.1, 1001.7, 1006.2):
        t8 = now + aligned_delay(8.0, now)
        assert (t8 % 4.0) == pytest.approx(0.0, abs=1e-6) or (t8 % 4.0) == pytest.approx(4.0)


def test_a_node_that_vanishes_mid_start_is_noticed(tmp_path: Path) -> None:
    """The agent reported, then went silent: the waiter asks Slurm once and sees NODE_FAIL."""
    sched = FakeScheduler([JobState.NODE_FAIL])
    # No scheduled poll could come within a minute: only the silence makes the waiter ask.
    w, _ = make(tmp_path, sched, poll_min=600.0, poll_max=600.0)
    w.silence = 0.3
    write_json(tmp_path / "node.json", {"phase": "launching", "node": "n1", "detail": "x"})
    t0 = time.monotonic()
    with pytest.raises(DesktopFailed, match=r"ended \(node_fail\)"):
        w.wait()
    assert sched.queries == 1 and time.monotonic() - t0 < 55


def test_ready_before_connection_json_is_visible(tmp_path: Path) -> None:
    """A shared filesystem may show connection.json a moment after the push says "ready"."""
    listener = Listener(tmp_path, tmp_path.name, "127.0.0.1")
    w, _ = make(tmp_path, FakeScheduler([JobState.RUNNING]), poll_min=10.0, poll_max=10.0)
    w.listener = listener
    Notifier(tmp_path).send({"phase": "ready", "detail": "desktop ready", "node": "n1"})
    threading.Timer(0.3, write_json, (tmp_path / "connection.json", {"url": "u"})).start()
    try:
        assert w.wait().url == "u"
    finally:
        listener.close()


@pytest.mark.reliability("D5 no push channel, phases in one timestamp tick",
                          "the file fallback still sees every phase and ready")
def test_two_phases_within_one_timestamp_tick_are_both_seen(tmp_path: Path) -> None:
    """node.json is compared by content: a "failed" written in the same mtime tick as the
    "launching" before it must still end the wait (no push channel here)."""
    sched = FakeScheduler([JobState.RUNNING])
    w, seen = make(tmp_path, sched, poll_min=600.0, poll_max=600.0)
    node = tmp_path / "node.json"
    write_json(node, {"phase": "launching", "node": "n1", "detail": "starting"})
    tick = node.stat().st_mtime_ns
    assert w._check_files() is None and seen == ["launching"]
    write_json(node, {"phase": "failed", "node": "n1", "reason": "Xorg exited (exit code 1)"})
    os.utime(node, ns=(tick, tick))  # the same timestamp tick as the previous phase
    with pytest.raises(DesktopFailed, match="Xorg exited"):
        w._check_files()
    write_json(node, {"phase": "ready", "node": "n1"})
    os.utime(node, ns=(tick, tick))
    w2, _ = make(tmp_path, sched)
    assert w2._check_files() is None  # ready, but connection.json is not visible yet
    write_json(tmp_path / "connection.json", {"url": "u"})
    assert w2._check_files() .url == "u"
