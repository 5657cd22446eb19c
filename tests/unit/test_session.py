"""Session directories: ids, lookup, atomic files, and the index of live sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hpcdesk.errors import SessionNotFound
from hpcdesk.files import atomic_write, read_json
from hpcdesk.scheduler import JobInfo, JobRef, JobState
from hpcdesk.session import Session, all_sessions, create, discard, find


def test_create_lookup_and_active_index(tmp_path: Path) -> None:
    a, b, c = create(tmp_path), create(tmp_path), create(tmp_path)
    for n, s in enumerate((a, b, c)):
        s.update_meta(id=s.id, created=n, job_id=str(100 + n), cluster=None)
    assert (tmp_path / a.id).stat().st_mode & 0o777 == 0o700
    assert [s.id for s in all_sessions(tmp_path)] == [a.id, b.id, c.id]
    b.update_meta(final={"state": "cancelled"})
    assert [s.id for s in all_sessions(tmp_path, include_ended=False)] == [a.id, c.id]
    assert [s.id for s in all_sessions(tmp_path)] == [a.id, b.id, c.id]
    assert find(tmp_path, b.id).id == b.id          # ended sessions stay addressable
    assert find(tmp_path, "101").id == b.id          # by job id
    assert find(tmp_path, c.id[:5]).id == c.id        # by unique prefix
    with pytest.raises(SessionNotFound, match="no session"):
        find(tmp_path, "zzzzzzzz")
    discard(c)
    assert not (tmp_path / c.id).exists() and not (tmp_path / ".active" / c.id).exists()


def test_meta_is_read_once_and_updates_are_seen(tmp_path: Path) -> None:
    s = create(tmp_path)
    s.update_meta(job_id="7")
    assert s.meta["job_id"] == "7"
    (tmp_path / s.id / "session.json").write_text('{"job_id": "8"}')
    assert s.meta["job_id"] == "7"                    # cached for this process
    assert s.update_meta(state="x") == {"job_id": "8", "state": "x"}  # merges the file


def test_atomic_write_mode_and_content(tmp_path: Path) -> None:
    p = tmp_path / "connection.json"
    atomic_write(p, '{"a": 1}', mode=0o600)
    assert p.stat().st_mode & 0o777 == 0o600
    assert read_json(p) == {"a": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["connection.json"]
    assert read_json(tmp_path / "missing.json") is None


def test_tail_lines_reads_whole_lines_from_the_end(tmp_path: Path) -> None:
    from hpcdesk.files import tail_lines

    log = tmp_path / "agent.log"
    log.write_text("".join(f"line {i} " + "x" * 300 + "\n" for i in range(1000)))
    last = tail_lines(log, 3).splitlines()
    assert [r.split()[1] for r in last] == ["997", "998", "999"]
    assert len(tail_lines(log, 0).splitlines()) == 1000
    assert tail_lines(tmp_path / "missing.log", 5) == ""


@pytest.mark.reliability("D8 hpcdesk list",
                          "newest session first")
def test_list_shows_newest_first(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from hpcdesk.cli import main

    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / "sessions"
    made = [create(root) for _ in range(3)]
    for n, s in enumerate(made):
        s.update_meta(id=s.id, created=1000 + n, job_id=str(100 + n), cluster=None,
                      final={"state": "completed", "detail": ""})
    assert main(["list", "--all", "--json", "--set", f"session_root={root}"]) == 0
    listed = [row["session"] for row in json.loads(capsys.readouterr().out)]
    assert listed == [s.id for s in reversed(made)]


class RecordingScheduler:
    """A FAKE scheduler that records what it is asked (the real backends' queries are tested
    against the dev cluster in tests/cluster/test_scheduler_contract.py)."""

    name = "recording"

    def __init__(self) -> None:
        self.queries: list[list[str]] = []

    def query(self, jobs: list[JobRef]) -> dict[JobRef, JobInfo]:
        self.queries.append([j.job_id for j in jobs])
        return {j: JobInfo(j, JobState.PENDING, reason="Priority") for j in jobs}


def ended_and_live(root: Path, ended: int, live: int) -> list[Session]:
    made = []
    for n in range(ended + live):
        s = create(root)
        meta: dict[str, Any] = {"id": s.id, "created": 1000 + n, "job_id": str(100 + n),
                                "cluster": None}
        if n < ended:
            meta["final"] = {"state": "completed", "detail": "", "at": 2000 + n}
        s.update_meta(**meta)
        made.append(s)
    return made


@pytest.mark.parametrize("argv", [["list", "--all"], ["list"], ["status"], ["status", "FIRST"],
                                  ["cancel", "FIRST"]])
def test_ended_sessions_are_answered_without_the_scheduler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    """An ended session's row comes from its final state: no backend is even made (with
    backend auto that would import pyslurm and run `sinfo -V`), let alone asked."""
    from hpcdesk.cli import main
    from hpcdesk.commands import common

    monkeypatch.setenv("HOME", str(tmp_path))
    made = ended_and_live(tmp_path / "sessions", ended=30, live=0)
    made_schedulers: list[str] = []

    def get_scheduler(backend: str, **_kw: Any) -> RecordingScheduler:
        made_schedulers.append(backend)
        return RecordingScheduler()

    monkeypatch.setattr(common, "get_scheduler", get_scheduler)
    argv = [made[0].id if a == "FIRST" else a for a in argv]
    rc = main([*argv, "--json", "--set", f"session_root={tmp_path / 'sessions'}",
               "--set", "scheduler.backend=auto"])
    assert rc == 0, capsys.readouterr().err
    assert made_schedulers == []
    out = json.loads(capsys.readouterr().out)
    rows = out if isinstance(out, list) else [out]
    assert all(r["state"] == "completed" for r in rows)
    assert len(rows) == {"list": 30 if "--all" in argv else 0}.get(argv[0], 1)


def test_one_query_names_only_the_live_sessions_jobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from hpcdesk.cli import main
    from hpcdesk.commands import common

    monkeypatch.setenv("HOME", str(tmp_path))
    made = ended_and_live(tmp_path / "sessions", ended=40, live=2)
    recorder = RecordingScheduler()
    monkeypatch.setattr(common, "get_scheduler", lambda *_a, **_kw: recorder)
    assert main(["list", "--all", "--json", "--set", f"session_root={tmp_path / 'sessions'}"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 42
    assert recorder.queries == [[s.job_id for s in made[40:]][::-1]]
    assert [r["state"] for r in rows[:2]] == ["queued", "queued"]


@pytest.mark.reliability("S12 session ids and paths",
                          "nothing traverses out of the session directory")
@pytest.mark.parametrize("key", ["", "..", "../x", "/etc", "a/b", "a\nb", ".active", "-x",
                                 "ab..cd/..", "x" * 101, "sess ion", "$(id)"])
def test_keys_that_could_leave_the_session_root_are_refused(tmp_path: Path, key: str) -> None:
    s = create(tmp_path / "sessions")
    s.update_meta(id=s.id, created=1, job_id="5", cluster=None)
    with pytest.raises(SessionNotFound, match="not a session id"):
        find(tmp_path / "sessions", key)


@pytest.mark.reliability("S12 session ids and paths",
                          "nothing traverses out of the session directory")
def test_node_run_refuses_a_request_naming_another_path(tmp_path: Path) -> None:
    import argparse

    from hpcdesk.commands import node
    from hpcdesk.errors import UsageError
    from hpcdesk.request import DesktopRequest
    from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig

    sdir = create(tmp_path).dir
    req = DesktopRequest(session_id="../../tmp/x", user="u", cpus=1, gpus=0, start_timeout=60,
                         desktop=DesktopConfig(), runtime=RuntimeConfig(), network=NetworkConfig())
    (sdir / "request.json").write_text(req.to_json())
    with pytest.raises(UsageError, match="names session '../../tmp/x'"):
        node.run(argparse.Namespace(session=str(sdir)))
