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

from hpcdesk.config import load
from hpcdesk.errors import ConfigError, SchedulerError, SchedulerRejected
from hpcdesk.login import jobscript
from hpcdesk.scheduler import JobRef, JobState, backends
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
        self.jobs: list[dict[str, Any]] = []
        self.all_jobs_loads = 0          # Jobs.load: every job on the cluster
        self.users_asked: list[int] = []  # job().find_user: slurm_load_job_user(uid)
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
                fake.all_jobs_loads += 1
                if fake.load_error:
                    raise FakeRPCError(fake.load_error)
                return {j["job_id"]: SimpleNamespace(
                    id=j["job_id"], user_id=j["user_id"], state=j["job_state"],
                    state_reason=j["state_reason"], start_time=j["start_time"],
                    allocated_nodes=j["nodes"], comment=j["comment"]) for j in fake.jobs}

        class LegacyJob:
            """pyslurm's older `job` class: find_user is slurm_load_job_user."""

            def find_user(self, user: int) -> dict[int, dict[str, Any]]:
                fake.users_asked.append(user)
                if fake.load_error:
                    raise ValueError(fake.load_error, 1007)
                return {j["job_id"]: dict(j) for j in fake.jobs if j["user_id"] == user}

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

        class Partitions:  # pyslurm.Partitions.load(): max_time in minutes or "UNLIMITED"
            @staticmethod
            def load() -> dict[str, SimpleNamespace]:
                return {
                    "gpu": SimpleNamespace(state="UP", max_time=480, is_default=True),
                    "long": SimpleNamespace(state="UP", max_time="UNLIMITED", is_default=False),
                    "old": SimpleNamespace(state="DOWN", max_time=2880, is_default=False)}

        class Nodes:  # pyslurm.Nodes.load(): Slurm's complete state strings
            @staticmethod
            def load() -> dict[str, SimpleNamespace]:
                return {"gpu01": SimpleNamespace(state="MIXED"),
                        "gpu02": SimpleNamespace(state="IDLE+DRAIN"),
                        "gpu03": SimpleNamespace(state="DOWN+NOT_RESPONDING")}

        self.Partitions = Partitions
        self.Nodes = Nodes
        self.JobSubmitDescription = JobSubmitDescription
        self.Jobs = Jobs
        self.job = LegacyJob
        self.Job = Job
        self.db = SimpleNamespace(Jobs=DbJobs, JobFilter=lambda **kw: kw)


def job(job_id: int, uid: int, state: str, reason: str = "None", start: int | None = None,
        nodes: str = "", comment: str = "") -> dict[str, Any]:
    """A job record as the controller holds it (pyslurm's older API gives such dicts)."""
    return {"job_id": job_id, "user_id": uid, "job_state": state, "state_reason": reason,
            "start_time": start, "nodes": nodes, "comment": comment}


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


def test_one_call_answers_for_all_jobs_and_maps_like_squeue() -> None:
    import os

    fake = FakePyslurm()
    me, other = os.getuid(), os.getuid() + 1
    start = int(time.time()) + 3600
    fake.jobs = [job(11, me, "PENDING", "Priority", start), job(12, me, "RUNNING", nodes="gpu01"),
                 job(13, other, "RUNNING", nodes="gpu02"),
                 job(14, me, "PENDING", "ReqNodeNotAvail,_UnavailableNodes:gpu02")]
    backend = sp.Pyslurm(fake)  # type: ignore[arg-type]
    got = backend.query([JobRef("11"), JobRef("12"), JobRef("13"), JobRef("14"), JobRef("99")])
    assert got[JobRef("11")].state is JobState.PENDING
    assert got[JobRef("11")].reason == "Priority"
    assert got[JobRef("11")].start_estimate == time.strftime("%Y-%m-%dT%H:%M:%S",
                                                             time.localtime(start))
    assert got[JobRef("12")].state is JobState.RUNNING and got[JobRef("12")].reason == ""
    assert got[JobRef("12")].nodes == "gpu01"
    assert got[JobRef("14")].reason == "ReqNodeNotAvail, UnavailableNodes:gpu02"
    # Another user's job is not in this user's table; with no accounting, gone means ended.
    assert got[JobRef("13")].state is JobState.ENDED
    assert got[JobRef("99")].state is JobState.ENDED
    assert backend.calls["job.find_user"] == 1


def test_the_queue_is_asked_for_this_users_jobs_only() -> None:
    """Jobs.load would fetch every job on the cluster: the backend names the user instead
    (slurm_load_job_user), so its cost follows the user's own jobs."""
    import os

    fake = FakePyslurm()
    fake.jobs = [job(100 + i, os.getuid() + 1, "PENDING", "JobHeldUser") for i in range(50)]
    fake.jobs.append(job(7, os.getuid(), "PENDING", "Priority", comment="hpcdesk:abc234"))
    backend = sp.Pyslurm(fake)  # type: ignore[arg-type]
    assert backend.query([JobRef("7")])[JobRef("7")].state is JobState.PENDING
    assert backend.fetch_tags(None) == {"hpcdesk:abc234": "7"}
    assert fake.users_asked == [os.getuid(), os.getuid()]
    assert fake.all_jobs_loads == 0


def test_partitions_and_down_nodes_come_from_the_api() -> None:
    """Partition limits and node states through pyslurm's API, in the protocol's shape: the
    check before submitting runs no scontrol or sinfo under this backend."""
    from hpcdesk.scheduler.unstartable import check_request

    backend = sp.Pyslurm(FakePyslurm())  # type: ignore[arg-type]
    parts = backend.partitions(None)
    assert parts is not None
    assert (parts["gpu"].max_time, parts["gpu"].max_seconds, parts["gpu"].default) == (
        "08:00:00", 8 * 3600, True)
    assert (parts["long"].max_seconds, parts["old"].max_time) == (None, "2-00:00:00")
    cause, step = check_request(parts, None, "10:00:00") or ("", "")
    assert "MaxTime 08:00:00" in cause and "-t 08:00:00" in step
    assert check_request(parts, "long", "10-00:00:00") is None
    assert backend.down_nodes(None) == {"gpu02", "gpu03"}
    assert (backend.calls["Partitions.load"], backend.calls["Nodes.load"]) == (1, 1)


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
    assert backends.select_backend("slurm-cli", None)[0] == "slurm-cli"
    monkeypatch.setattr(sp, "probe", lambda: sp.Probe(False, "pyslurm is not installed"))
    name, why = backends.select_backend("auto", None)
    assert name == "slurm-cli" and "pyslurm is not installed" in why
    with pytest.raises(ConfigError, match="pyslurm cannot be used here"):
        backends.select_backend("pyslurm", None)
    name, why = backends.select_backend("auto", "othercluster")
    assert name == "slurm-cli" and "scheduler.cluster" in why
    monkeypatch.setattr(sp, "probe", lambda: sp.Probe(True, "pyslurm 22.5.3 matches", None))
    assert backends.select_backend("auto", None) == ("pyslurm", "auto: pyslurm 22.5.3 matches")


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
