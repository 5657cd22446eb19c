"""Slurm state mapping and the CLI backend's parsing, against a FAKE squeue/sacct.

These fakes only pin parsing and environment scrubbing; the real-Slurm behaviour is tested
in tests/cluster against the dev cluster.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from hpcdesk.errors import SchedulerError, SchedulerRejected
from hpcdesk.scheduler import JobRef, JobState, map_slurm_state
from hpcdesk.scheduler.slurm_cli import SlurmCli


@pytest.mark.parametrize(("text", "state"), [
    ("PENDING", JobState.PENDING), ("R", JobState.RUNNING), ("CANCELLED by 1001",
    JobState.CANCELLED), ("NODE_FAIL", JobState.NODE_FAIL), ("OUT_OF_MEMORY",
    JobState.OUT_OF_MEMORY), ("TIMEOUT", JobState.TIMEOUT), ("WHATEVER", JobState.UNKNOWN),
])
def test_state_map(text: str, state: JobState) -> None:
    assert map_slurm_state(text) is state


def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    d = tmp_path / "fakebin"
    d.mkdir(exist_ok=True)
    f = d / name
    f.write_text("#!/bin/sh\n" + body)
    f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")


def test_query_parses_and_ignores_user_format(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SQUEUE_FORMAT", "%all")
    monkeypatch.setenv("USER", "someone-else")
    monkeypatch.setenv("LOGNAME", "someone-else")
    fake_bin(tmp_path, monkeypatch, "squeue", f"""
[ -n "$SQUEUE_FORMAT" ] && {{ echo "user format leaked" >&2; exit 9; }}
echo "$@" > {tmp_path}/args
echo "11|PENDING|Priority|2026-11-28T10:00:00|"
echo "12|RUNNING|None|2026-11-27T10:00:00|gpu01"
echo "99|RUNNING|None|N/A|gpu02"
""")
    fake_bin(tmp_path, monkeypatch, "sacct", 'echo "13|CANCELLED by 5|0:15|gpu02"\n')
    cli = SlurmCli()
    jobs = [JobRef("11"), JobRef("12"), JobRef("13")]
    res = cli.query(jobs)
    assert res[jobs[0]].state is JobState.PENDING and res[jobs[0]].reason == "Priority"
    assert res[jobs[0]].start_estimate == "2026-11-28T10:00:00"
    assert res[jobs[1]].nodes == "gpu01"
    assert res[jobs[2]].state is JobState.CANCELLED and res[jobs[2]].exit_code == "0:15"
    assert cli.calls == {"squeue": 1, "sacct": 1}
    assert "--states=all" in (tmp_path / "args").read_text()
    # The controller is asked for this user's jobs only (REQUEST_JOB_USER_INFO), never for
    # the whole queue: the cost follows the user's jobs, not the cluster's. The user is the
    # process's own uid, whatever $USER and $LOGNAME say.
    assert f"--user={os.getuid()}" in (tmp_path / "args").read_text().split()


def test_unreachable_controller_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bin(tmp_path, monkeypatch, "squeue", "echo 'slurm_load_jobs error: Unable to contact "
             "slurm controller (connect failure)' >&2; exit 1\n")
    res = SlurmCli().query([JobRef("5")])
    assert res[JobRef("5")].state is JobState.UNKNOWN


def test_gone_without_accounting_is_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_bin(tmp_path, monkeypatch, "squeue", "exit 0\n")
    fake_bin(tmp_path, monkeypatch, "sacct", "echo 'Slurm accounting storage is disabled' >&2; "
             "exit 1\n")
    assert SlurmCli().query([JobRef("5")])[JobRef("5")].state is JobState.ENDED


def test_submit_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\n")
    fake_bin(tmp_path, monkeypatch, "sbatch", "echo 'sbatch: error: invalid partition "
             "specified: nope' >&2; exit 1\n")
    with pytest.raises(SchedulerRejected, match="invalid partition specified: nope") as e:
        SlurmCli().submit(script, None)
    assert e.value.exit_code == 2
    fake_bin(tmp_path, monkeypatch, "sbatch", "echo 'sbatch: error: Batch job submission "
             "failed: Unable to contact slurm controller' >&2; exit 1\n")
    with pytest.raises(SchedulerError) as e2:
        SlurmCli().submit(script, None)
    assert e2.value.exit_code == 3
    fake_bin(tmp_path, monkeypatch, "sbatch", "echo '77;clusterb'\n")
    assert SlurmCli().submit(script, None) == JobRef("77", "clusterb")


def test_shared_cache_saves_rpcs_but_never_hides_a_new_job(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "count"
    fake_bin(tmp_path, monkeypatch, "squeue", f"""
echo x >> {counter}
echo "11|PENDING|Priority|N/A|"
[ -e {tmp_path}/job12 ] && echo "12|PENDING|Priority|N/A|"
exit 0
""")
    fake_bin(tmp_path, monkeypatch, "sacct", "exit 1\n")
    cache = tmp_path / "cache"
    a, b = SlurmCli(cache_dir=cache), SlurmCli(cache_dir=cache)   # two client processes
    assert a.query([JobRef("11")])[JobRef("11")].state is JobState.PENDING
    assert b.query([JobRef("11")])[JobRef("11")].state is JobState.PENDING
    assert counter.read_text().count("x") == 1          # the second one used the snapshot
    (tmp_path / "job12").touch()                          # submitted after the snapshot
    assert b.query([JobRef("12")])[JobRef("12")].state is JobState.PENDING
    assert counter.read_text().count("x") == 2
    assert (cache / "queue-default.txt").stat().st_mode & 0o777 == 0o600
    time.sleep(1.1)                                       # too old: ask again
    a.query([JobRef("11")])
    assert counter.read_text().count("x") == 3


def test_clients_polling_at_the_same_instant_share_one_squeue(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    counter = tmp_path / "count"
    fake_bin(tmp_path, monkeypatch, "squeue", f"""
echo x >> {counter}
sleep 0.3
echo "11|PENDING|Priority|N/A|"
""")
    clients = [SlurmCli(cache_dir=tmp_path / "cache") for _ in range(5)]
    threads = [threading.Thread(target=c.query, args=([JobRef("11")],)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counter.read_text().count("x") == 1
