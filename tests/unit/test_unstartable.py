"""Jobs that can never start: pending reasons that end the wait, and the partition check
made before submitting (one `scontrol show partition`, its output as Slurm 22.05 prints it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcdesk.login.waiting import JobCannotStart, Progress, Waiter
from hpcdesk.scheduler import JobInfo, JobRef, JobState
from hpcdesk.scheduler.slurm_cli import parse_partitions
from hpcdesk.scheduler.unstartable import check_request, why_unstartable
from hpcdesk.schema import TimeoutsConfig
from hpcdesk.session import Session

SHOW = (
    "PartitionName=gpu AllowGroups=ALL Default=YES QoS=N/A DefaultTime=NONE MaxNodes=UNLIMITED "
    "MaxTime=08:00:00 MinNodes=0 Nodes=gpu[01-02] State=UP TotalCPUs=16\n"
    "PartitionName=debug AllowGroups=ALL Default=NO MaxTime=UNLIMITED Nodes=gpu01 State=UP\n"
    "PartitionName=old AllowGroups=ALL Default=NO MaxTime=1-00:00:00 Nodes=gpu02 State=DOWN\n"
)


def test_partition_limits_before_submitting() -> None:
    parts = parse_partitions(SHOW)
    assert parts["gpu"].max_seconds == 8 * 3600 and parts["gpu"].default
    assert parts["debug"].max_seconds is None
    cause, step = check_request(parts, None, "10-00:00:00") or ("", "")
    assert "MaxTime 08:00:00" in cause and "gpu" in cause and "-t 08:00:00" in step
    assert check_request(parts, None, "8:00:00") is None
    assert check_request(parts, "gpu,debug", "10-00:00:00") is None  # debug can run it
    down = check_request(parts, "old", "1:00:00")
    assert down and "partition old is down" in down[0]
    assert check_request(parts, "nosuch", "1:00:00") is None  # left to sbatch's own answer


@pytest.mark.parametrize(("reason", "needle"), [
    ("PartitionTimeLimit", "longer than the partition allows"),
    ("QOSMaxWallDurationPerJobLimit", "QOS"),
    ("AssocMaxJobsLimit", "MaxJobs"),
    ("InvalidAccount", "account is invalid"),
    ("InvalidQOS", "QOS is invalid"),
    ("PartitionDown", "partition is down"),
    ("PartitionInactive", "inactive"),
])
def test_reasons_that_never_resolve(reason: str, needle: str) -> None:
    found = why_unstartable(reason)
    assert found and needle in found[0] and found[1]


def test_reasons_that_resolve_by_waiting() -> None:
    for reason in ("Priority", "Resources", "JobHeldUser", "BeginTime", "Dependency",
                   "PartitionConfig", ""):
        assert why_unstartable(reason) is None
    busy = "ReqNodeNotAvail, UnavailableNodes:gpu01"
    assert why_unstartable(busy, set()) is None                 # reserved or busy: it returns
    down = why_unstartable(busy, {"gpu01"})
    assert down and "gpu01" in down[0]


class PendingScheduler:
    """FAKE: the job is pending for `reason`."""

    name = "fake"

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.queries = 0

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        return JobRef("1")

    def query(self, jobs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
        self.queries += 1
        return {j: JobInfo(j, JobState.PENDING, reason=self.reason) for j in jobs}

    def cancel(self, job: JobRef) -> None:
        pass

    def exit_code(self, job: JobRef) -> str:
        return ""


@pytest.mark.reliability("D3 a job that can never start",
                          "refused before sbatch, or the wait ends at once with cause and fix; cancelled or kept")
def test_the_wait_ends_at_the_first_hopeless_reason(tmp_path: Path) -> None:
    sched = PendingScheduler("PartitionTimeLimit")
    w = Waiter(Session(tmp_path), sched, JobRef("1"), TimeoutsConfig(poll_min=0.2, poll_max=0.2),
               Progress(lambda stage, detail: None))
    with pytest.raises(JobCannotStart, match="PartitionTimeLimit") as exc:
        w.wait()
    assert sched.queries == 1 and "-t" in exc.value.hint


def test_no_side_door_to_slurm() -> None:
    """unstartable.py decides; the scheduler backend asks Slurm (its commands or its API)."""
    import ast

    import hpcdesk.scheduler.unstartable as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "subprocess" not in imported and "hpcdesk.scheduler.slurm_cli" not in imported
