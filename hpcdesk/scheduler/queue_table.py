"""What the Slurm backends share: the user's queue as one table, read once for all jobs.

A backend produces the table of ALL the user's jobs on a cluster with one scheduler call
(`squeue -u USER`, or pyslurm's `slurm_load_job_user`) as lines `id|state|reason|start|nodes`, and
looks up the jobs that already left the controller in accounting. Everything else lives here
once: grouping by cluster, parsing, the short-lived snapshot that every hpcdesk process of
the user shares (so several clients polling at one instant cost one RPC), and the reading of
Slurm's error messages (a wrong request versus an unreachable controller).
"""

from __future__ import annotations

import abc
import fcntl
import os
import re
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from hpcdesk.errors import SchedulerError, SubmitUncertain
from hpcdesk.files import atomic_write
from hpcdesk.scheduler import JobInfo, JobRef, JobState, map_slurm_state

SEP = "|"

# Slurm messages that mean "your request is wrong", as opposed to "Slurm is unreachable".
# (Patterns, compiled only when a call failed: compiling them costs a cold start ~10 ms.)
USER_ERRORS = (
    r"invalid partition|invalid account|invalid qos|node configuration is not available|"
    r"invalid generic resource|invalid feature|time limit is invalid|invalid trackable|"
    r"reservation is invalid|more processors requested|memory required by task|"
    r"violates accounting|invalid (?:job )?constraint|invalid cluster|no such cluster|"
    r"unrecognized option|invalid option|invalid gres|access denied|user's group not permitted|"
    r"requested partition configuration not available|invalid reservation"
)
UNREACHABLE = (
    r"unable to contact slurm controller|socket timed out|connection refused|"
    r"slurm_load_jobs error: (?:unable|socket|communication)|transient|try again|"
    r"communication connection failure|unable to connect"
)
ALREADY_DONE = r"already completing or completed|invalid job id"
TIMED_OUT = r"socket timed out|timed out"
REJECTED_HINT = ("check the partition/account/qos/gres with `sinfo` and "
                 "`sacctmgr show assoc user=$USER`")


_TAG = re.compile(r"^#SBATCH\s+--comment=(hpcdesk:\S+)\s*$", re.MULTILINE)
# After a submission timed out: how long the controller must keep answering "no such job"
# before hpcdesk believes the job was never queued (a slow controller may still be at it).
LOOKUP_WINDOW = 20.0


def job_tag(script: Path) -> str | None:
    """The tag that names a job script's job in the queue (its `--comment`)."""
    m = _TAG.search(script.read_text())
    return m.group(1) if m else None


def matches(pattern: str, text: str) -> bool:
    return re.search(pattern, text, re.IGNORECASE) is not None


def row(job_id: str, state: str, reason: str, start: str, nodes: str) -> str:
    return SEP.join((job_id, state, reason, start, nodes))


def clean(value: str) -> str:
    value = value.strip()
    return "" if value in ("N/A", "(null)", "None", "n/a") else value


def parse(text: str, wanted: dict[str, JobRef]) -> dict[JobRef, JobInfo]:
    """The wanted jobs found in a table (other jobs and `-M` header lines are ignored)."""
    found: dict[JobRef, JobInfo] = {}
    for line in text.splitlines():
        parts = line.strip().split(SEP)
        if len(parts) != 5 or parts[0] not in wanted:
            continue
        job_id, state, reason, start, nodes = parts
        ref = wanted[job_id]
        found[ref] = JobInfo(ref, map_slurm_state(state), reason=clean(reason),
                             start_estimate=clean(start), nodes=clean(nodes), raw_state=state)
    return found


def ended(refs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
    """Not in the queue and not in accounting (or accounting is disabled): it has ended."""
    return {r: JobInfo(r, JobState.ENDED, reason="no longer known to Slurm") for r in refs}


class QueueTable(abc.ABC):
    """Base of the Slurm backends: `query` from one table per cluster, shared briefly."""

    name = "slurm"
    table_source = "squeue"  # how the table is asked for, in messages

    def __init__(self, cache_dir: Path | None = None, cache_age: float = 1.0) -> None:
        self.cache_dir = cache_dir
        self.cache_age = cache_age
        self.calls: dict[str, int] = defaultdict(int)  # for benchmarks and tests
        self.last_error = ""

    # --- what a backend provides ----------------------------------------------------------
    @abc.abstractmethod
    def fetch_table(self, cluster: str | None) -> str | None:
        """All of the user's jobs on `cluster` as table lines (one RPC); None on failure,
        with the reason in self.last_error."""

    @abc.abstractmethod
    def gone(self, cluster: str | None, refs: list[JobRef]) -> dict[JobRef, JobInfo]:
        """Jobs absent from the table: accounting's answer, UNKNOWN if it is unreachable."""

    @abc.abstractmethod
    def fetch_tags(self, cluster: str | None) -> dict[str, str] | None:
        """The user's queued jobs as {comment: job id} (one RPC); None if Slurm did not
        answer, with the reason in self.last_error."""

    # --- a submission that timed out ------------------------------------------------------
    def recover_submit(self, script: Path, cluster: str | None, why: str,
                       window: float = LOOKUP_WINDOW) -> JobRef:
        """After `why` (a timeout): the job if it was queued after all, never a second one."""
        tag = job_tag(script)
        if tag is None:
            raise SubmitUncertain(f"{why}, and the job script carries no tag to look it up by",
                                  hint="check `squeue --me`; cancel a job you do not want")
        answered = None
        deadline = time.monotonic() + window
        delay = 0.5
        while True:
            tags = self.fetch_tags(cluster)
            if tags is not None:
                if tag in tags:
                    return JobRef(tags[tag], cluster)
                answered = answered or time.monotonic()
            if time.monotonic() >= deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 4.0)
        if answered is not None:
            raise SchedulerError(f"{why}; Slurm then answered for {window:.0f}s without a job "
                                 f"tagged {tag}, so nothing was queued",
                                 hint="try again; if it keeps happening the controller is "
                                 "overloaded: tell your site's admins")
        raise SubmitUncertain(
            f"{why}, and Slurm is not answering, so hpcdesk cannot tell whether the job was "
            f"queued (it would carry the comment {tag})",
            hint=f"when Slurm answers again: `squeue --me -o '%i %k'`; a job with comment "
            f"{tag} is this desktop (`scancel` it, or follow it once it runs)")

    # --- shared -----------------------------------------------------------------------------
    def query(self, jobs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
        by_cluster: dict[str | None, list[JobRef]] = defaultdict(list)
        for job in jobs:
            by_cluster[job.cluster].append(job)
        result: dict[JobRef, JobInfo] = {}
        for cluster, refs in by_cluster.items():
            result.update(self._query_cluster(cluster, refs))
        return result

    def _query_cluster(self, cluster: str | None, refs: list[JobRef]) -> dict[JobRef, JobInfo]:
        wanted = {r.job_id: r for r in refs}
        table = self._shared_table(cluster, set(wanted))
        if table is None:
            detail = f": {self.last_error}" if self.last_error else ""
            why = f"{self.table_source} failed{detail}"
            return {r: JobInfo(r, JobState.UNKNOWN, reason=why) for r in refs}
        found = parse(table, wanted)
        missing = [r for r in refs if r not in found]
        if missing:
            found.update(self.gone(cluster, missing))
        return found

    def _shared_table(self, cluster: str | None, wanted: set[str]) -> str | None:
        """The user's table, from a fresh snapshot shared by their processes, or one RPC."""
        if self.cache_dir is None:
            return self.fetch_table(cluster)
        cache = self.cache_dir / f"queue-{cluster or 'default'}.txt"
        fresh = self._read_snapshot(cache, wanted)
        if fresh is not None:
            return fresh
        try:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            lock = os.open(cache.with_suffix(".lock"), os.O_RDONLY | os.O_CREAT, 0o600)
        except OSError:
            return self.fetch_table(cluster)  # no shared snapshot here: ask Slurm directly
        try:
            # Clients that poll at the same instant queue here; the first one asks Slurm,
            # the others find its fresh snapshot when they get the lock.
            fcntl.flock(lock, fcntl.LOCK_EX)
            fresh = self._read_snapshot(cache, wanted)
            if fresh is not None:
                return fresh
            table = self.fetch_table(cluster)
            if table is not None:
                atomic_write(cache, table, mode=0o600)
            return table
        finally:
            os.close(lock)

    def _read_snapshot(self, cache: Path, wanted: set[str]) -> str | None:
        try:
            if time.time() - cache.stat().st_mtime > self.cache_age:
                return None
            text = cache.read_text()
        except OSError:
            return None
        listed = {line.split(SEP, 1)[0].strip() for line in text.splitlines()}
        return text if wanted <= listed else None  # a newer job is not in an older snapshot
