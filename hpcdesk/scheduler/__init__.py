"""The scheduler protocol: submit, query many jobs in one call, cancel.

Backends: `slurm_cli` (the Slurm commands, default) and `slurm_pyslurm` (Slurm's C API through
pyslurm, optional); `queue_table` holds what they share. `backend: auto` takes pyslurm when it
imports and matches this host's Slurm, else the commands (backends.py chooses and says why).
"""

# No `from __future__ import annotations` here: with it, typing.NamedTuple compiles each
# field's annotation string at every start of `hpcdesk list` (issue 23).
import enum
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple, Protocol


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETING = "completing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"
    TIMEOUT = "timeout"
    NODE_FAIL = "node_fail"
    OUT_OF_MEMORY = "out_of_memory"
    PREEMPTED = "preempted"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"  # the scheduler could not tell us right now: keep waiting
    ENDED = "ended"      # left the queue and accounting has no record: finished, details lost

    @property
    def finished(self) -> bool:
        return self in _FINISHED

    @property
    def active(self) -> bool:
        return self in (JobState.PENDING, JobState.RUNNING, JobState.SUSPENDED,
                        JobState.COMPLETING)


_FINISHED = {JobState.COMPLETED, JobState.CANCELLED, JobState.FAILED, JobState.TIMEOUT,
             JobState.NODE_FAIL, JobState.OUT_OF_MEMORY, JobState.PREEMPTED, JobState.ENDED}

# Slurm's long and compact state names (squeue %T / sacct State) -> JobState.
SLURM_STATES: dict[str, JobState] = {
    "PENDING": JobState.PENDING, "PD": JobState.PENDING,
    "CONFIGURING": JobState.PENDING, "CF": JobState.PENDING,
    "REQUEUED": JobState.PENDING, "RQ": JobState.PENDING,
    "REQUEUE_HOLD": JobState.PENDING, "REQUEUE_FED": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING, "SPECIAL_EXIT": JobState.FAILED,
    "RUNNING": JobState.RUNNING, "R": JobState.RUNNING,
    "RESIZING": JobState.RUNNING, "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.COMPLETING, "SO": JobState.COMPLETING,
    "COMPLETING": JobState.COMPLETING, "CG": JobState.COMPLETING,
    "COMPLETED": JobState.COMPLETED, "CD": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED, "CA": JobState.CANCELLED,
    "FAILED": JobState.FAILED, "F": JobState.FAILED,
    "BOOT_FAIL": JobState.NODE_FAIL, "BF": JobState.NODE_FAIL,
    "DEADLINE": JobState.TIMEOUT, "DL": JobState.TIMEOUT,
    "TIMEOUT": JobState.TIMEOUT, "TO": JobState.TIMEOUT,
    "NODE_FAIL": JobState.NODE_FAIL, "NF": JobState.NODE_FAIL,
    "OUT_OF_MEMORY": JobState.OUT_OF_MEMORY, "OOM": JobState.OUT_OF_MEMORY,
    "PREEMPTED": JobState.PREEMPTED, "PR": JobState.PREEMPTED,
    "REVOKED": JobState.CANCELLED, "RV": JobState.CANCELLED,
    "SUSPENDED": JobState.SUSPENDED, "S": JobState.SUSPENDED,
    "STOPPED": JobState.SUSPENDED, "ST": JobState.SUSPENDED,
}


def map_slurm_state(text: str) -> JobState:
    # sacct prints e.g. "CANCELLED by 1000"; 23.11+ JSON may join several flags.
    word = text.strip().split(" ")[0].split(",")[0].upper()
    return SLURM_STATES.get(word, JobState.UNKNOWN)


# Value types are NamedTuples, not dataclasses: `hpcdesk list` and `status` load this module,
# and the dataclasses module (with inspect, ast, dis) costs ~10 ms at start (issue 23).
class JobRef(NamedTuple):
    job_id: str
    cluster: str | None = None

    def __str__(self) -> str:
        return f"{self.cluster}:{self.job_id}" if self.cluster else self.job_id


class JobInfo(NamedTuple):
    ref: JobRef
    state: JobState
    reason: str = ""           # Slurm's pending reason ("Priority", "Resources", ...)
    start_estimate: str = ""   # Slurm's estimated start time, when it has one
    nodes: str = ""
    exit_code: str = ""
    raw_state: str = ""


class Partition(NamedTuple):
    """A partition's state and time limit, as the scheduler reports them."""

    name: str
    state: str            # UP, DOWN, DRAIN, INACTIVE
    max_time: str         # Slurm's text ("8:00:00", "UNLIMITED")
    max_seconds: int | None
    default: bool


class Scheduler(Protocol):
    name: str

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        """The queued job. When the submission itself timed out, the job is looked up by the
        tag in the script's `--comment` (hpcdesk:<session>): its ref if it was queued,
        SchedulerError if it surely was not, SubmitUncertain if Slurm cannot tell now."""
        ...

    def query(self, jobs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
        """All jobs in as few scheduler calls as possible (one per cluster).

        A job the scheduler does not answer for right now gets JobState.UNKNOWN.
        """
        ...

    def cancel(self, job: JobRef) -> None: ...

    def exit_code(self, job: JobRef) -> str:
        """The job's exit code ("0:15") while the scheduler remembers it, else ""."""
        ...

    def partitions(self, cluster: str | None) -> dict[str, Partition] | None:
        """Every partition by name (one call); None when the scheduler cannot say now."""
        ...

    def down_nodes(self, cluster: str | None) -> set[str]:
        """Nodes that are down, drained or failing; empty when the scheduler cannot say."""
        ...
