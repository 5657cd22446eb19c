"""`hpcdesk cancel` of a job still in the queue, while `hpcdesk submit` waits for it in another
shell: the session is "cancelled" (as `cancel` says), never "failed". FAKE scheduler: the job
leaves the queue when cancelled (as on a cluster without accounting); the rest is real."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcdesk import config
from hpcdesk.commands.outcome import wait_and_report
from hpcdesk.login.status import describe
from hpcdesk.scheduler import JobInfo, JobRef, JobState
from hpcdesk.session import Session, create

pytestmark = pytest.mark.usefixtures("isolated_config")


class QueueThenCancelled:
    """Pending until `hpcdesk cancel` (another process) marks the session; then gone."""

    name = "fake"

    def __init__(self, session_dir: Path) -> None:
        self.dir = session_dir

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        return JobRef("7")

    def query(self, jobs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
        if "cancel_requested" not in json.loads((self.dir / "session.json").read_text()):
            # `hpcdesk cancel` in another shell, as the user sees the job queued
            Session(self.dir).update_meta(cancel_requested=time.time())
            return {j: JobInfo(j, JobState.PENDING, reason="Priority") for j in jobs}
        return {j: JobInfo(j, JobState.ENDED) for j in jobs}

    def cancel(self, job: JobRef) -> None:
        raise AssertionError("the job was cancelled already; nothing to cancel again")

    def exit_code(self, job: JobRef) -> str:
        return ""


def test_cancel_of_a_queued_job_is_cancelled_not_failed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    loaded = config.load(None, {"timeouts.poll_min": 0.2, "timeouts.poll_max": 1.0})
    session = create(tmp_path / "sessions")
    session.update_meta(id=session.id, job_id="7", created=time.time())
    scheduler = QueueThenCancelled(session.dir)
    code = wait_and_report(session, scheduler, JobRef("7"), loaded, None, True,
                           time.monotonic())
    out, err = capsys.readouterr()
    assert json.loads(out)["state"] == "cancelled"
    assert "was cancelled" in err and "error" not in err
    assert code != 0  # no desktop came of it
    status = describe(Session(session.dir), None)
    assert status.state == "cancelled", status
