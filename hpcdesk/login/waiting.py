"""Waiting for a desktop: push events first, session files second, the scheduler last.

Push events and node.json carry the agent's phase, read through phases.desktop_state; when
the desktop is ready, the URL and credentials come from connection.json (0600).

The scheduler is asked once per cycle for all watched jobs, with backoff while queued
(fast at first, then slower), and not at all while the node agent is reporting. A scheduler
that cannot be reached means "unknown, keep waiting".

Poll intervals double (poll_min, 2x, 4x, ... up to poll_max) and every poll falls on a
wall-clock multiple of its interval. So all of a user's waiting clients poll at the same
instants, whatever their step on the ladder, and share one `squeue` through the scheduler
backend's short-lived cache (see slurm_cli.SlurmCli).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hpcdesk.connection import Connection
from hpcdesk.errors import HpcdeskError, WaitTimeout
from hpcdesk.phases import READY, SILENCE, desktop_state
from hpcdesk.scheduler import JobInfo, JobRef, JobState, Scheduler
from hpcdesk.schema import TimeoutsConfig
from hpcdesk.session import Session

if TYPE_CHECKING:  # the push channel is needed only while submitting
    from hpcdesk.notify import Listener

FILE_CHECK_INTERVAL = 0.5
START_GRACE = 30.0  # on top of timeouts.start, for the agent's own start and reporting


class DesktopFailed(HpcdeskError):
    """The job ended or the desktop failed before it was ready."""

    def __init__(self, message: str, info: JobInfo | None = None, node_state: dict[str, Any]
                 | None = None, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.info = info
        self.node_state = node_state or {}


class JobCannotStart(DesktopFailed):
    """Slurm keeps the job pending for a reason that waiting cannot resolve."""


@dataclass
class Progress:
    """What the waiter tells the user; `emit` is called only when something changed."""

    emit: Callable[[str, str], None]
    last: tuple[str, str] = ("", "")

    def __call__(self, stage: str, detail: str) -> None:
        if (stage, detail) != self.last:
            self.last = (stage, detail)
            self.emit(stage, detail)


@dataclass
class Waiter:
    session: Session
    scheduler: Scheduler
    job: JobRef
    timeouts: TimeoutsConfig
    progress: Progress
    listener: Listener | None = None
    silence: float = SILENCE
    scheduler_queries: int = 0
    _interval: float = field(init=False)
    _agent_seen: bool = field(init=False, default=False)
    _running_since: float | None = field(init=False, default=None)
    _node_seen: dict[str, Any] = field(init=False, default_factory=dict)
    _last_heard: float = field(init=False, default=0.0)
    _ready_seen: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._interval = self.timeouts.poll_min

    def wait(self) -> Connection:
        started = time.monotonic()
        # No query at once: a job that starts quickly reports itself through the push
        # channel before the first poll, and then Slurm is never asked at all.
        next_poll = started + aligned_delay(self._interval)
        while True:
            now = time.monotonic()
            if not self._agent_seen and now >= next_poll:
                info = self._query()
                next_poll = time.monotonic() + aligned_delay(self._interval)
                if info.state is JobState.PENDING and self.timeouts.queue and (
                        now - started > self.timeouts.queue):
                    raise WaitTimeout(f"the job waited more than {self.timeouts.queue}s in the "
                                      f"queue ({info.reason or 'no reason given'})")
            if self._agent_seen and now - self._last_heard > self.silence:
                self._last_heard = now
                info = self._query()  # raises if the job has ended
            if self._running_since is not None and self._start_overdue(now):
                info = self._query()  # the one check that tells a dead node from a slow start
                if info.state.finished:
                    raise self._ended(info)
                raise WaitTimeout(
                    f"the desktop did not become ready within {self.timeouts.start}s of the job "
                    "starting", hint="see `hpcdesk logs SESSION`; raise timeouts.start if the "
                    "desktop is just slow to start here")
            wait_for = min(FILE_CHECK_INTERVAL, max(0.0, next_poll - time.monotonic()))
            if self._agent_seen:
                wait_for = FILE_CHECK_INTERVAL
            events = self.listener.poll(wait_for) if self.listener else _sleep(wait_for)
            for event in events:
                conn = self._on_record(event)
                if conn:
                    return conn
            conn = self._check_files()
            if conn:
                return conn

    def _start_overdue(self, now: float) -> bool:
        assert self._running_since is not None
        return now - self._running_since > self.timeouts.start + START_GRACE

    def _query(self) -> JobInfo:
        self.scheduler_queries += 1
        info = self.scheduler.query([self.job]).get(self.job) or JobInfo(self.job, JobState.UNKNOWN)
        if info.state is JobState.PENDING:
            self._check_startable(info)
            when = f", expected start {info.start_estimate}" if info.start_estimate else ""
            self.progress("queued", f"job {self.job} is queued ({info.reason or 'waiting'}{when})")
            self._interval = min(self._interval * 2, self.timeouts.poll_max)
        elif info.state in (JobState.RUNNING, JobState.COMPLETING):
            self.progress("running", f"job {self.job} is running on {info.nodes or 'a node'}")
            if self._running_since is None:
                self._running_since = time.monotonic()
            self._interval = max(self.timeouts.poll_min, 2.0)
        elif info.state is JobState.UNKNOWN:
            self.progress("unknown", f"Slurm is not answering ({info.reason}); still waiting")
        elif info.state.finished:
            raise self._ended(info)
        return info

    def _check_startable(self, info: JobInfo) -> None:
        from hpcdesk.scheduler import unstartable

        down: set[str] | None = None
        if info.reason.startswith("ReqNodeNotAvail"):
            down = self.scheduler.down_nodes(self.job.cluster)
        why = unstartable.why_unstartable(info.reason, down)
        if why:
            cause, step = why
            raise JobCannotStart(f"job {self.job} can never start as asked: {cause} (Slurm's "
                                 f"pending reason: {info.reason})", info, hint=step)

    def _ended(self, info: JobInfo) -> DesktopFailed:
        node = self.session.node_state()
        msg = f"job {self.job} ended ({info.state.value}) before the desktop was ready"
        if node:
            msg += f": {desktop_state(node).detail}"
        return DesktopFailed(msg, info, node)

    def _on_record(self, record: dict[str, Any]) -> Connection | None:
        """A verified push event or node.json: the agent's phase (never a secret)."""
        self._mark_agent()
        st = desktop_state(record)
        if st.state == READY:
            self._ready_seen = True
            return self.session.connection()
        if st.ended:
            raise DesktopFailed(f"the desktop {st.state} on {st.node}: {st.detail}", None, record)
        self.progress(st.phase, f"{st.node}: {st.detail}")
        return None

    def _mark_agent(self) -> None:
        self._last_heard = time.monotonic()
        if not self._agent_seen:
            self._agent_seen = True
            if self._running_since is None:
                self._running_since = time.monotonic()

    def _check_files(self) -> Connection | None:
        if self._ready_seen:
            # Ready was announced: the credentials are in connection.json (0600), which a
            # shared filesystem may show a moment after the announcement.
            conn = self.session.connection()
            if conn:
                return conn
        # Compared by content, not by st_mtime: two phases written within one timestamp tick
        # (or on a filesystem with coarse times) look alike to stat() but not here.
        node = self.session.node_state()
        if not node or node == self._node_seen:
            return None
        self._node_seen = node
        return self._on_record(node)


def aligned_delay(interval: float, now: float | None = None) -> float:
    """Seconds until the next wall-clock multiple of `interval` (at least a tenth of it)."""
    now = time.time() if now is None else now
    delay = interval - (now % interval)
    return delay if delay >= interval / 10 else delay + interval


def _sleep(seconds: float) -> list[dict[str, Any]]:
    time.sleep(seconds)
    return []
