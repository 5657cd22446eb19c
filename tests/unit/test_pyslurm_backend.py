"""The pyslurm backend's mapping, against a FAKE pyslurm module (FakePyslurm below).

The real pyslurm, built for this machine's Slurm, runs the same contract live on the dev
cluster (tests/cluster/test_scheduler_contract.py); this file pins the field mapping, the
error mapping and the backend choice where no controller is needed.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hpcdesk import scheduler
from hpcdesk.config import load
from hpcdesk.errors import ConfigError, SchedulerError, SchedulerRejected
from hpcdesk.login import jobscript
from hpcdesk.scheduler import JobRef, JobState
from hpcdesk.scheduler import slurm_pyslurm as sp


class FakeRPCError(Exception):
    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class FakePyslurm:
    """A FAKE of the few pyslurm objects the backend uses (no libslurm involved)."""

    __version__ = "22.5.3"
    RPCError = FakeRPCError

    @staticmethod
    def slurm_api_version() -> tuple[int, int, int]:
        return (22, 5, 8)  # the Slurm headers this fake was "built" against

    def __init__(self) -> None:
        self.submitted: list[dict[str, Any]] = []
        self.signal_applied = 0
        self.jobs: list[SimpleNamespace] = []
        self.load_error: str | None = None
        self.submit_error: str | None = None
        self.cancel_error: str | None = None
        self.db_error = "Failed to get Jobs from slurmdbd"
        fake = self

        class JobSubmitDescription:
            def __init__(self, **kw: Any) -> None:
                self.kw = kw

            def _create_job_submit_desc(self, is_update: bool = False) -> None:
                fake.submitted.append(self.kw)

            def _set_signal(self) -> None:
                fake.signal_applied += 1

            def submit(self) -> int:
                self._create_job_submit_desc()
                if fake.submit_error:
                    raise FakeRPCError(fake.submit_error)
                return 4242

        class Jobs:
            @staticmethod
            def load() -> dict[int, SimpleNamespace]:
                if fake.load_error:
                    raise FakeRPCError(fake.load_error)
                return {j.id: j for j in fake.jobs}

        class Job:
            def __init__(self, job_id: int) -> None:
                self.job_id = job_id

            def cancel(self) -> None:
                if fake.cancel_error:
                    raise FakeRPCError(fake.cancel_error)

        class DbJobs:
            @staticmethod
            def load(_filter: Any) -> dict[int, Any]:
                raise FakeRPCError(fake.db_error)

        self.JobSubmitDescription = JobSubmitDescription
        self.Jobs = Jobs
        self.Job = Job
        self.db = SimpleNamespace(Jobs=DbJobs, JobFilter=lambda **kw: kw)


def job(job_id: int, uid: int, state: str, reason: str = "None", start: int | None = None,
        nodes: str = "") -> SimpleNamespace:
    return SimpleNamespace(id=job_id, user_id=uid, state=state, state_reason=reason,
                           start_time=start, allocated_nodes=nodes)


def script_for(tmp_path: Path, **overrides: Any) -> Path:
    cfg = load(None, {k.replace("__", "."): v for k, v in overrides.items()}).config
    path = tmp_path / "job.sh"
    path.write_text(jobscript.render(cfg, "abc123", tmp_path))
    return path


def test_description_from_the_job_script(tmp_path: Path) -> None:
    script = script_for(tmp_path, scheduler__partition="gpu", scheduler__account="proj",
                        scheduler__time="2:00:00", scheduler__cpus=3, scheduler__memory="3G",
                        scheduler__gpus=1, scheduler__signal_lead=90,
                        scheduler__extra_args=["--hold", "--nodelist=gpu02"])
    fields = sp.description_fields(script)
    assert fields["script"] == str(script)
    assert fields["working_directory"] == str(tmp_path)
    assert fields["name"] == "hpcdesk"
    assert fields["standard_output"] == str(tmp_path / "job.out")
    assert (fields["ntasks"], fields["cpus_per_task"], fields["nodes"]) == (1, 3, "1")
    assert fields["memory_per_node"] == "3G" and fields["time_limit"] == "2:00:00"
    assert fields["signal"] == {"signal": "SIGUSR1", "time": 90, "batch_only": True,
                                "allow_reservation_overlap": False}
    assert fields["partitions"] == ["gpu"] and fields["account"] == "proj"
    assert fields["gres_per_node"] == "gpu:1"
    assert fields["priority"] == 0 and fields["required_nodes"] == ["gpu02"]
    assert "SBATCH_PARTITION" not in fields["environment"]
    assert sp.description_fields(script_for(tmp_path, scheduler__time="90"))["time_limit"] == 90


def test_an_option_pyslurm_cannot_pass_is_refused(tmp_path: Path) -> None:
    script = script_for(tmp_path, scheduler__extra_args=["--mail-type=END"])
    with pytest.raises(SchedulerRejected, match="cannot pass '#SBATCH --mail-type=END'"):
        sp.description_fields(script)


def test_submit_applies_the_signal_and_maps_errors(tmp_path: Path) -> None:
    fake = FakePyslurm()
    backend = sp.Pyslurm(fake)  # type: ignore[arg-type]
    script = script_for(tmp_path, scheduler__partition="gpu")
    assert backend.submit(script, None) == JobRef("4242", None)
    assert fake.signal_applied == 1  # pyslurm 22.5.3 would drop --signal otherwise
    fake.submit_error = "Invalid partition name specified"
    with pytest.raises(SchedulerRejected, match="Invalid partition name") as rejected:
        backend.submit(script, None)
    assert rejected.value.exit_code == 2
    fake.submit_error = "Unable to contact slurm controller (connect failure)"
    with pytest.raises(SchedulerError) as down:
        backend.submit(script, None)
    assert down.value.exit_code == 3
    with pytest.raises(SchedulerRejected, match="slurm-cli"):
        backend.submit(script, "othercluster")


def test_one_load_answers_for_all_jobs_and_maps_like_squeue() -> None:
    import os

    fake = FakePyslurm()
    me, other = os.getuid(), os.getuid() + 1
    start = int(time.time()) + 3600
    fake.jobs = [job(11, me, "PENDING", "Priority", start), job(12, me, "RUNNING", nodes="gpu01"),
                 job(13, other, "RUNNING", nodes="gpu02")]
    backend = sp.Pyslurm(fake)  # type: ignore[arg-type]
    got = backend.query([JobRef("11"), JobRef("12"), JobRef("13"), JobRef("99")])
    assert got[JobRef("11")].state is JobState.PENDING
    assert got[JobRef("11")].reason == "Priority"
    assert got[JobRef("11")].start_estimate == time.strftime("%Y-%m-%dT%H:%M:%S",
                                                             time.localtime(start))
    assert got[JobRef("12")].state is JobState.RUNNING and got[JobRef("12")].reason == ""
    assert got[JobRef("12")].nodes == "gpu01"
    # Another user's job is not in this user's table; with no accounting, gone means ended.
    assert got[JobRef("13")].state is JobState.ENDED
    assert got[JobRef("99")].state is JobState.ENDED
    assert backend.calls["Jobs.load"] == 1


def test_controller_down_is_unknown_not_failure() -> None:
    fake = FakePyslurm()
    fake.load_error = "Unable to contact slurm controller (connect failure)"
    got = sp.Pyslurm(fake).query([JobRef("11")])  # type: ignore[arg-type]
    assert got[JobRef("11")].state is JobState.UNKNOWN
    assert "Unable to contact" in got[JobRef("11")].reason


def test_cancel_of_a_finished_job_is_fine() -> None:
    fake = FakePyslurm()
    fake.cancel_error = "Job/step already completing or completed"
    sp.Pyslurm(fake).cancel(JobRef("5"))  # type: ignore[arg-type]
    fake.cancel_error = "Unable to contact slurm controller (connect failure)"
    with pytest.raises(SchedulerError):
        sp.Pyslurm(fake).cancel(JobRef("5"))  # type: ignore[arg-type]


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    assert scheduler.select_backend("slurm-cli", None)[0] == "slurm-cli"
    monkeypatch.setattr(sp, "probe", lambda: sp.Probe(False, "pyslurm is not installed"))
    name, why = scheduler.select_backend("auto", None)
    assert name == "slurm-cli" and "pyslurm is not installed" in why
    with pytest.raises(ConfigError, match="pyslurm cannot be used here"):
        scheduler.select_backend("pyslurm", None)
    name, why = scheduler.select_backend("auto", "othercluster")
    assert name == "slurm-cli" and "scheduler.cluster" in why
    monkeypatch.setattr(sp, "probe", lambda: sp.Probe(True, "pyslurm 22.5.3 matches", None))
    assert scheduler.select_backend("auto", None) == ("pyslurm", "auto: pyslurm 22.5.3 matches")


def test_probe_refuses_a_mismatched_release(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pyslurm", FakePyslurm())
    monkeypatch.setattr(sp, "_running_slurm", lambda: (24, 11, 5))
    found = sp.probe()
    assert not found.usable
    assert "built for Slurm 22.05.8" in found.reason and "runs Slurm 24.11.5" in found.reason
    monkeypatch.setattr(sp, "_running_slurm", lambda: (22, 5, 9))
    assert sp.probe().usable
    assert sp.probe().reason == "pyslurm 22.5.3 matches Slurm 22.05.9"
