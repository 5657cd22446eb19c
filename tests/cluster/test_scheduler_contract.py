"""One scheduler contract, run live on the dev cluster for each backend: the Slurm commands
(slurm-cli) and Slurm's C API through pyslurm, built for this machine's Slurm by
scripts/build-pyslurm.sh (`make setup`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import User, controller_stopped, node_user_pids
from tooling import strict

from harness.devcluster import SITE, VENV, as_user, run

pytestmark = pytest.mark.cluster
BACKENDS = ["slurm-cli", "pyslurm"]
HELD = ("--set", "scheduler.extra_args=['--hold']")

# Runs as the test user with the venv's Python: one backend object, one query for many jobs.
QUERY = """
import json, sys
from pathlib import Path
from hpcdesk.scheduler import JobRef
from hpcdesk.scheduler.backends import get_scheduler
backend, ids = sys.argv[1], sys.argv[2:]
s = get_scheduler(backend, cache_dir=None)
got = s.query([JobRef(i) for i in ids])
print(json.dumps({"backend": s.name, "calls": dict(s.calls),
                  "jobs": {r.job_id: {"state": i.state.value, "reason": i.reason,
                                      "start": i.start_estimate, "nodes": i.nodes}
                           for r, i in got.items()}}))
"""

# The real pyslurm, wrapped so that it records the owner (uid) of every job record the
# controller sent back, whichever of its queue calls the backend uses (a spy, not a fake:
# each call goes to libslurm and slurmctld unchanged).
SPY = """
import json, os, sys
import pyslurm
from hpcdesk.scheduler import JobRef
from hpcdesk.scheduler.slurm_pyslurm import Pyslurm

owners = []

class Jobs:
    @staticmethod
    def load(*args, **kw):
        got = pyslurm.Jobs.load(*args, **kw)
        owners.extend(j.user_id for j in got.values())
        return got

class job:
    def __init__(self):
        self.real = pyslurm.job()
    def find_user(self, user):
        got = self.real.find_user(user)
        owners.extend(j["user_id"] for j in got.values())
        return got

class Spy:
    def __getattr__(self, name):
        return {"Jobs": Jobs, "job": job}.get(name) or getattr(pyslurm, name)

backend = Pyslurm(Spy())
got = backend.query([JobRef(i) for i in sys.argv[1:]])
print(json.dumps({"uid": os.getuid(), "owners": owners,
                  "states": {r.job_id: i.state.value for r, i in got.items()}}))
"""


def py(user: User, code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run(as_user(user.name, str(VENV / "bin/python"), "-c", code, *args),
               timeout=timeout, cwd="/")


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
            "Requeue": "0", "Nice": "0"}


def with_backend(name: str) -> tuple[str, ...]:
    return (*SITE, "--set", f"scheduler.backend={name}")


def scontrol_job(job: str) -> dict[str, str]:
    line = run(["scontrol", "--oneliner", "show", "job", job]).stdout
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
    done = run(["runuser", "-u", user.name, "--", "sbatch", "--parsable", "-p", "gpu", "-o",
                 "/dev/null", "--wrap", "true"], cwd="/").stdout.strip()
    deadline = time.monotonic() + 120
    while run(["squeue", "-h", "-j", done]).stdout.strip() and time.monotonic() < deadline:
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
    table_calls = {"slurm-cli": "squeue", "pyslurm": "job.find_user"}[backend]
    assert out["calls"][table_calls] == 1, out["calls"]


def test_cancel_ends_the_job_and_is_idempotent(user: User, backend: str,
                                               cleanup_jobs: list[str]) -> None:
    sid, job, _ = submit_held(user, backend, cleanup_jobs)
    assert user.json("cancel", sid, *with_backend(backend))["state"] == "cancelled"
    assert run(["squeue", "-h", "-j", job, "-t", "PD,R,CG"]).stdout.strip() == ""
    again = user.run("cancel", sid, *with_backend(backend))
    assert again.returncode == 0, again.stderr


@pytest.mark.reliability("S5 time limit",
                          "warning ahead (status, on screen), clean stop at the early signal, final state timeout")
def test_time_limit_signal_reaches_the_desktop(user: User, backend: str,
                                               cleanup_jobs: list[str]) -> None:
    """A 2-minute job warned 60 s before its end: Slurm sends the warning about a minute
    after the start (its timer runs every 30 s), and the desktop stops, saying why. 90 s
    before the end the user is warned (node.json, status, a message on the desktop), and the
    final state is "timeout"."""
    data = user.json("submit", *with_backend(backend), "--time", "2",
                     "--set", "scheduler.signal_lead=60", "--set", "timeouts.warn_before=90")
    sid, node = str(data["session"]), str(data["node"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    deadline = time.monotonic() + 180
    state: dict[str, object] = {}
    warned_in_status = ""
    while time.monotonic() < deadline:
        state = json.loads((sdir / "node.json").read_text())
        if state.get("warning") and not warned_in_status:
            warned_in_status = str(user.json("status", sid, *with_backend(backend))["detail"])
        if state["phase"] == "stopped":
            break
        time.sleep(1)
    assert state.get("phase") == "stopped", state
    assert "time limit" in str(state["reason"])
    assert "ends in about" in warned_in_status and "save your work" in warned_in_status
    assert "starting time-limit warning: " in (sdir / "agent.log").read_text()  # on screen
    deadline = time.monotonic() + 60
    while node_user_pids(node) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert node_user_pids(node) == []
    # Slurm may still list the job (COMPLETING) a moment after its last process: "stopping".
    deadline = time.monotonic() + 60
    final = user.json("status", sid, *with_backend(backend))
    while final["state"] == "stopping" and time.monotonic() < deadline:
        time.sleep(1)
        final = user.json("status", sid, *with_backend(backend))
    assert final["state"] == "timeout", final


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
    with controller_stopped():
        yield


@pytest.mark.reliability("S7 controller down from the start",
                          "clear error (exit 3), nothing left behind")
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


@pytest.mark.reliability("D3 a job that can never start",
                          "refused before sbatch, or the wait ends at once with cause and fix; cancelled or kept")
def test_a_job_that_can_never_start_ends_the_wait(user: User, backend: str,
                                                  cleanup_jobs: list[str]) -> None:
    """Issue 12 defect 3: the partition's MaxTime is 8 h. Checked before sbatch; and when the
    job script asks for more behind the check's back, the pending reason ends the wait."""
    before = {p.name for p in user.sessions_root().iterdir()}
    proc = user.run("submit", *with_backend(backend), "-t", "10-00:00:00", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "MaxTime 08:00:00" in proc.stderr and "-t 08:00:00" in proc.stderr, proc.stderr
    assert {p.name for p in user.sessions_root().iterdir()} == before
    sneaky = ("--set", "scheduler.extra_args=['--time=10-00:00:00']")
    for keep in (False, True):
        extra = ("--set", "scheduler.unstartable=keep") if keep else ()
        proc = user.run("submit", *with_backend(backend), *sneaky, *extra, timeout=120)
        m = re.search(r"session (\w+), job (\d+)", proc.stdout)
        assert m, proc.stdout + proc.stderr
        cleanup_jobs.append(m[1])
        assert proc.returncode == 1, proc.stderr
        assert "can never start" in proc.stderr and "PartitionTimeLimit" in proc.stderr
        assert "hint: ask for less time (-t)" in proc.stderr
        state = run(["squeue", "-h", "-j", m[2], "-o", "%T"]).stdout.strip()
        if keep:
            assert state == "PENDING" and "is kept in the queue" in proc.stderr
            listed = user.json("list", *with_backend(backend))
            assert [r["state"] for r in listed if r["session"] == m[1]] == ["queued"]
        else:
            assert state in ("", "CANCELLED") and f"job {m[2]} was cancelled" in proc.stderr


PARTITIONS = """
import json, sys
from hpcdesk.scheduler.backends import get_scheduler
s = get_scheduler(sys.argv[1], cache_dir=None)
parts = s.partitions(None) or {}
down = sorted(s.down_nodes(None))
print(json.dumps({"calls": dict(s.calls), "down": down,
                  "parts": {n: [p.state, p.max_time, p.max_seconds, p.default]
                            for n, p in parts.items()}}))
"""


def test_partition_limits_come_through_the_backend(user: User, backend: str) -> None:
    """The check before submitting asks the scheduler backend, not Slurm's commands behind its
    back: pyslurm answers partition limits and node states through its API (no scontrol, no
    sinfo), and both backends agree with `scontrol show partition`."""
    from hpcdesk.scheduler.slurm_cli import parse_partitions

    proc = py(user, PARTITIONS, backend)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    shown = parse_partitions(run(["scontrol", "--oneliner", "show", "partition"]).stdout)
    assert data["parts"] == {n: [p.state, p.max_time, p.max_seconds, p.default]
                             for n, p in shown.items()}
    assert data["parts"]["gpu"][2] == 8 * 3600  # the dev cluster's MaxTime=08:00:00
    if backend == "pyslurm":
        assert not {"scontrol", "sinfo"} & set(data["calls"]), data["calls"]
        assert data["calls"]["Partitions.load"] == 1 and data["calls"]["Nodes.load"] == 1


@pytest.mark.reliability("D4 sbatch times out",
                          "the tagged job is found and followed; never a duplicate or an orphan")
def test_a_submitted_job_is_found_by_its_tag(user: User, backend: str,
                                             cleanup_jobs: list[str]) -> None:
    """Issue 12 defect 4: each backend finds a job by the tag in its script's --comment."""
    sid, job, sdir = submit_held(user, backend, cleanup_jobs)
    assert scontrol_job(job)["Comment"] == f"hpcdesk:{sid}"
    code = ("import sys; from pathlib import Path; from hpcdesk.scheduler.backends import get_scheduler; "
            "s = get_scheduler(sys.argv[1]); "
            "print(s.recover_submit(Path(sys.argv[2]), None, 'test').job_id)")
    proc = py(user, code, backend, str(sdir / "job.sh"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == job


@pytest.mark.reliability("D4 sbatch times out",
                          "the tagged job is found and followed; never a duplicate or an orphan")
@pytest.mark.parametrize("queues", [True, False])
def test_sbatch_that_times_out_leaves_no_orphan(user: User, cleanup_jobs: list[str],
                                                queues: bool) -> None:
    """sbatch queues the job (or does not) and then hangs past scheduler.timeout: submit
    follows the queued job instead of dropping its directory, and never submits twice."""
    wrap = Path(tempfile.mkdtemp(prefix="hpcdesk-sbatch-hangs-"))  # the user can read it
    wrap.chmod(0o755)
    real = shutil.which("sbatch")
    assert real
    (wrap / "sbatch").write_text("#!/bin/sh\n" + (f'{real} "$@"\n' if queues else "")
                                 + "exec sleep 600\n")
    (wrap / "sbatch").chmod(0o755)
    before = {p.name for p in user.sessions_root().iterdir()}
    path = f"{wrap}:{VENV / 'bin'}:/usr/bin:/bin"
    try:
        proc = user.run("submit", *SITE, "--set", "scheduler.timeout=3", *HELD, "--no-wait",
                        "--json", env={"PATH": path}, timeout=180)
    finally:
        shutil.rmtree(wrap)
    if not queues:
        assert proc.returncode == 3, proc.stderr
        assert "nothing was queued" in proc.stderr and "Traceback" not in proc.stderr
        assert {p.name for p in user.sessions_root().iterdir()} == before
        return
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    cleanup_jobs.append(str(info["session"]))
    tagged = [line.split()[0] for line in run(["squeue", "-h", "-u", user.name, "-o",
                                                "%i %k"]).stdout.splitlines()
              if line.split()[1:] == [f"hpcdesk:{info['session']}"]]
    assert tagged == [str(info["job_id"])]  # the one queued job, followed, not orphaned
    assert user.json("status", str(info["session"]), *SITE)["state"] == "queued"


def test_pyslurm_asks_the_controller_for_this_users_jobs_only(
        user: User, second_user: User, cleanup_jobs: list[str]) -> None:
    """Issue 23: with other users' jobs in the queue, the pyslurm backend's queue call
    brings back this user's jobs and no one else's (slurm_load_job_user, as `squeue -u`),
    so its cost follows the user's own work, not the cluster's."""
    foreign = [run(["runuser", "-u", second_user.name, "--", "sbatch", "--parsable", "--hold",
                     "-p", "gpu", "-o", "/dev/null", "--wrap", "true"], cwd="/").stdout.strip()
               for _ in range(3)]
    try:
        assert all(j.isdigit() for j in foreign), foreign
        _, job, _ = submit_held(user, "pyslurm", cleanup_jobs)
        proc = py(user, SPY, job)
    finally:
        run(["scancel", *(j for j in foreign if j.isdigit())])
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["states"] == {job: "pending"}
    assert out["owners"], "the spy saw no queue call"
    assert set(out["owners"]) == {out["uid"]}, out["owners"]
