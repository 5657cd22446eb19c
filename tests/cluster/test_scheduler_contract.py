"""One scheduler contract, run live on the dev cluster for each backend: the Slurm commands
(slurm-cli) and Slurm's C API through pyslurm, built for this machine's Slurm by
scripts/build-pyslurm.sh (`make setup`)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import DEVCLUSTER, VENV, User, _run, node_user_pids
from tooling import strict

pytestmark = pytest.mark.cluster
SITE = ("--site", "devcluster")
BACKENDS = ["slurm-cli", "pyslurm"]
HELD = ("--set", "scheduler.extra_args=['--hold']")
CTLD_PIDFILE = Path("/run/slurmctld-hpcdesk-devcluster.pid")

# Runs as the test user with the venv's Python: one backend object, one query for many jobs.
QUERY = """
import json, sys
from pathlib import Path
from hpcdesk.scheduler import JobRef, get_scheduler
backend, ids = sys.argv[1], sys.argv[2:]
s = get_scheduler(backend, cache_dir=None)
got = s.query([JobRef(i) for i in ids])
print(json.dumps({"backend": s.name, "calls": dict(s.calls),
                  "jobs": {r.job_id: {"state": i.state.value, "reason": i.reason,
                                      "start": i.start_estimate, "nodes": i.nodes}
                           for r, i in got.items()}}))
"""


def py(user: User, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    argv = ["runuser", "-u", user.name, "--", "env", f"HOME={user.home}",
            str(VENV / "bin/python"), "-c", code, *args]
    return _run(argv, timeout=timeout, cwd="/")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, user: User) -> str:
    name = str(request.param)
    if name == "pyslurm":
        found = py(user, "from hpcdesk.scheduler.slurm_pyslurm import probe; p = probe(); "
                   "print(p.usable, p.reason)")
        if not found.stdout.startswith("True"):
            message = (f"pyslurm is not usable here: {found.stdout.strip()} {found.stderr[-500:]}"
                       " (make setup builds it from ../shared/vendor/pyslurm; needs libslurm-dev)")
            if strict():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    return name


# What the dev cluster's site config and the held job ask for, as scontrol shows it.
EXPECTED = {"JobName": "hpcdesk", "Partition": "gpu", "TimeLimit": "01:00:00", "NumCPUs": "2",
            "NumTasks": "1", "CPUs/Task": "2", "MinMemoryNode": "2G",
            "TresPerNode": "gres:gpu:1", "Priority": "0", "Reason": "JobHeldUser",
            "Requeue": "1", "Nice": "0"}


def with_backend(name: str) -> tuple[str, ...]:
    return (*SITE, "--set", f"scheduler.backend={name}")


def scontrol_job(job: str) -> dict[str, str]:
    line = _run(["scontrol", "--oneliner", "show", "job", job]).stdout
    return dict(m.groups() for m in re.finditer(r"([\w/:]+)=(\S*)", line))


def submit_held(user: User, backend: str, cleanup_jobs: list[str]) -> tuple[str, str, Path]:
    info = user.json("submit", *with_backend(backend), *HELD, "--no-wait")
    sid, job = str(info["session"]), str(info["job_id"])
    cleanup_jobs.append(sid)
    return sid, job, user.sessions_root() / sid


def test_submit_carries_the_job_scripts_options(user: User, backend: str,
                                                cleanup_jobs: list[str]) -> None:
    sid, job, sdir = submit_held(user, backend, cleanup_jobs)
    fields = scontrol_job(job)
    assert {k: fields[k] for k in EXPECTED} == EXPECTED
    assert fields["StdOut"] == fields["StdErr"] == str(sdir / "job.out")
    assert fields["WorkDir"] == str(sdir)
    assert fields["UserId"].startswith(f"{user.name}(")
    status = user.json("status", sid, *with_backend(backend))
    assert status["state"] == "queued" and "JobHeldUser" in status["detail"]


def test_one_query_answers_for_many_jobs(user: User, backend: str,
                                         cleanup_jobs: list[str]) -> None:
    _, held_a, _ = submit_held(user, backend, cleanup_jobs)
    _, held_b, _ = submit_held(user, backend, cleanup_jobs)
    done = _run(["runuser", "-u", user.name, "--", "sbatch", "--parsable", "-p", "gpu", "-o",
                 "/dev/null", "--wrap", "true"], cwd="/").stdout.strip()
    deadline = time.monotonic() + 120
    while _run(["squeue", "-h", "-j", done]).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    proc = py(user, QUERY, backend, held_a, held_b, done, "999999")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["backend"] == backend
    jobs = out["jobs"]
    assert jobs[held_a]["state"] == jobs[held_b]["state"] == "pending"
    assert jobs[held_a]["reason"] == "JobHeldUser"
    assert jobs[done]["state"] in ("completed", "ended")
    assert jobs["999999"]["state"] == "ended"
    table_calls = {"slurm-cli": "squeue", "pyslurm": "Jobs.load"}[backend]
    assert out["calls"][table_calls] == 1, out["calls"]


def test_cancel_ends_the_job_and_is_idempotent(user: User, backend: str,
                                               cleanup_jobs: list[str]) -> None:
    sid, job, _ = submit_held(user, backend, cleanup_jobs)
    assert user.json("cancel", sid, *with_backend(backend))["state"] == "cancelled"
    assert _run(["squeue", "-h", "-j", job, "-t", "PD,R,CG"]).stdout.strip() == ""
    again = user.run("cancel", sid, *with_backend(backend))
    assert again.returncode == 0, again.stderr


def test_time_limit_signal_reaches_the_desktop(user: User, backend: str,
                                               cleanup_jobs: list[str]) -> None:
    """A 2-minute job warned 60 s before its end: Slurm sends the warning about a minute
    after the start (its timer runs every 30 s), and the desktop stops, saying why."""
    data = user.json("submit", *with_backend(backend), "--time", "2",
                     "--set", "scheduler.signal_lead=60")
    sid, node = str(data["session"]), str(data["node"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    deadline = time.monotonic() + 180
    state: dict[str, object] = {}
    while time.monotonic() < deadline:
        state = json.loads((sdir / "node.json").read_text())
        if state["phase"] == "stopped":
            break
        time.sleep(1)
    assert state.get("phase") == "stopped", state
    assert "time limit" in str(state["reason"])
    deadline = time.monotonic() + 60
    while node_user_pids(node) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert node_user_pids(node) == []


def test_unknown_partition_is_bad_input(user: User, backend: str) -> None:
    before = {p.name for p in user.sessions_root().iterdir()}
    proc = user.run("submit", *with_backend(backend), "--partition", "nosuchpartition")
    assert proc.returncode == 2, proc.stderr
    assert "invalid partition" in proc.stderr.lower() and "Traceback" not in proc.stderr
    assert {p.name for p in user.sessions_root().iterdir()} == before


def test_another_cluster_is_refused_by_pyslurm_and_auto_takes_the_commands(user: User) -> None:
    proc = user.run("submit", *with_backend("pyslurm"), "--cluster", "elsewhere")
    if proc.returncode == 2 and "pyslurm cannot be used here" in proc.stderr:
        pytest.fail(f"pyslurm is not usable: {proc.stderr}")
    assert proc.returncode == 2, proc.stderr
    assert "scheduler.backend: slurm-cli" in proc.stderr
    # (doctor's controller check fails for a cluster that does not exist: exit 1, JSON still)
    doctor = user.run("doctor", *with_backend("auto"), "--set", "scheduler.cluster=elsewhere",
                      "--json")
    check = next(c for c in json.loads(doctor.stdout)["checks"]
                 if c["name"] == "scheduler backend")
    assert check["detail"].startswith("slurm-cli (auto: scheduler.cluster is set")


def test_doctor_says_which_backend_and_why(user: User, backend: str) -> None:
    doctor = user.json("doctor", *with_backend("auto"))
    check = next(c for c in doctor["checks"] if c["name"] == "scheduler backend")
    # On this machine pyslurm is built for its Slurm, so auto takes it.
    assert check["status"] == "ok"
    assert re.match(r"pyslurm \(auto: pyslurm [\d.]+ matches Slurm [\d.]+\)", check["detail"]), \
        check
    mine = user.json("doctor", *with_backend(backend))
    check = next(c for c in mine["checks"] if c["name"] == "scheduler backend")
    assert check["detail"].startswith(backend)


@pytest.fixture
def controller_down() -> Iterator[None]:
    """slurmctld stopped for the test, started again (with its saved state) afterwards."""
    pid = int(CTLD_PIDFILE.read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        yield
    finally:
        up = _run(["bash", str(DEVCLUSTER), "up"], timeout=300)
        assert up.returncode == 0, up.stderr


def test_controller_down_is_a_clear_error_and_leaves_nothing(
        user: User, controller_down: None) -> None:
    for name in BACKENDS:
        before = {p.name for p in user.sessions_root().iterdir()}
        proc = user.run("submit", *with_backend(name), timeout=300)
        assert proc.returncode == 3, (name, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert re.search(r"unable to contact slurm controller|connection refused",
                         proc.stderr, re.IGNORECASE), proc.stderr
        assert {p.name for p in user.sessions_root().iterdir()} == before
