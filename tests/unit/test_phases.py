"""One reading of the agent's phases for the waiter and `hpcdesk status`."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk.phases import desktop_state


@pytest.mark.parametrize(("record", "state", "detail", "ended"), [
    ({}, "starting", "", False),
    ({"phase": "launching", "detail": "starting the desktop", "node": "n1"}, "starting",
     "starting the desktop", False),
    ({"phase": "waiting"}, "starting", "waiting", False),
    ({"phase": "ready", "detail": "desktop ready at u"}, "ready", "desktop ready at u", False),
    ({"phase": "stopping", "detail": "scancel"}, "stopping", "scancel", False),
    ({"phase": "stopped", "detail": "d", "reason": "time limit"}, "stopped", "time limit", True),
    ({"phase": "failed", "reason": "Xorg exited"}, "failed", "Xorg exited", True),
    ({"phase": "some-future-phase"}, "starting", "some-future-phase", False),
])
def test_desktop_state(record: dict[str, str], state: str, detail: str, ended: bool) -> None:
    st = desktop_state(record)
    assert (st.state, st.detail, st.ended) == (state, detail, ended)
    assert st.node == record.get("node", "node")


@pytest.mark.parametrize(("phase", "job", "expected"), [
    ("launching", "running", "starting"),
    ("ready", "running", "ready"),
    ("failed", "running", "stopping"),   # the agent has ended; its job is winding down
    ("failed", "ended", "failed"),
    ("stopped", "ended", "ended"),
])
def test_status_reads_phases_the_same_way(tmp_path: Path, phase: str, job: str,
                                          expected: str) -> None:
    from hpcdesk.files import write_json
    from hpcdesk.login.status import describe
    from hpcdesk.scheduler import JobInfo, JobRef, JobState
    from hpcdesk.session import Session

    write_json(tmp_path / "session.json", {"id": tmp_path.name, "job_id": "7"})
    write_json(tmp_path / "node.json", {"phase": phase, "node": "n1", "detail": "d"})
    info = JobInfo(JobRef("7"), JobState(job))
    assert describe(Session(tmp_path), info).state == expected


@pytest.mark.parametrize(("node", "job", "state", "needle"), [
    ({"phase": "ready"}, "ended", "failed", "node agent on n1 was killed or died"),
    ({"phase": "waiting"}, "completed", "failed", "while the desktop was starting"),
    ({"phase": "ready"}, "node_fail", "node_fail", "node n1 failed while the desktop was ready"),
    ({"phase": "stopped", "reason": "time limit reached", "outcome": "timeout"}, "completed",
     "timeout", "time limit reached"),
    ({"phase": "stopped", "reason": "no viewer was connected for 60s", "outcome": "idle"},
     "completed", "idle", "no viewer"),
])
def test_status_says_how_a_desktop_ended(tmp_path: Path, node: dict[str, str], job: str,
                                         state: str, needle: str) -> None:
    from hpcdesk.files import write_json
    from hpcdesk.login.status import describe
    from hpcdesk.scheduler import JobInfo, JobRef, JobState
    from hpcdesk.session import Session

    write_json(tmp_path / "session.json", {"id": tmp_path.name, "job_id": "7"})
    write_json(tmp_path / "node.json", {"node": "n1", "detail": "d", **node})
    st = describe(Session(tmp_path), JobInfo(JobRef("7"), JobState(job)))
    assert st.state == state and needle in st.detail, (st.state, st.detail)
