"""One way to prepare a session, whoever starts the desktop: `hpcdesk submit` (and `hpcdesk
tunnel --submit`, which runs it on the login node) and the Open OnDemand job (`hpcdesk ood
start`). The session directory gets request.json, the job script and session.json; nothing
is submitted here.
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

from hpcdesk.config import LoadedConfig
from hpcdesk.connect.turn import check_files, configured
from hpcdesk.errors import UsageError
from hpcdesk.files import atomic_write, write_json
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import slurm_time_seconds
from hpcdesk.session import Session, create, discard, now, session_root


def build_request(loaded: LoadedConfig, session_id: str) -> DesktopRequest:
    c = loaded.config
    return DesktopRequest(session_id=session_id, user=getpass.getuser(), cpus=c.scheduler.cpus,
                          gpus=c.scheduler.gpus, start_timeout=c.timeouts.start,
                          desktop=c.desktop, runtime=c.runtime, network=c.network, turn=c.turn,
                          time_limit=slurm_time_seconds(c.scheduler.time),
                          warn_before=c.timeouts.warn_before, idle_timeout=c.timeouts.idle,
                          signal_lead=c.scheduler.signal_lead, policy=c.policy)

def prepare(loaded: LoadedConfig, job_script: Path | None = None, render: bool = True,
            **meta: Any) -> Session:
    """A session directory holding request.json, job.sh and session.json (nothing submitted).

    job.sh is rendered from jobscripts/ (`render`), or, for a job another tool wrote (Open
    OnDemand's), copied from `job_script` for the user when it is readable. `meta`: more of
    session.json.
    """
    if configured(loaded.config.turn):
        # A bad secret or credential file is a configuration error: nothing is submitted.
        check_files(loaded.config.turn, loaded.sources)
    root = session_root(loaded.config.session_root)
    try:
        session = create(root)
    except OSError as exc:
        raise UsageError(f"cannot create a session directory under {root}: {exc.strerror}",
                         hint="set session_root to a writable directory the nodes share") from None
    try:
        request = build_request(loaded, session.id)
        script = _job_script(loaded, session, job_script, render)
    except BaseException:
        discard(session)
        raise
    atomic_write(session.path("request.json"), request.to_json() + "\n", mode=0o644)
    if script is not None:
        atomic_write(session.path("job.sh"), script, mode=0o700 if job_script is None else 0o600)
    write_json(session.path("session.json"), {
        "id": session.id, "created": now(), "site": loaded.config.name,
        "site_file": str(loaded.site_path) if loaded.site_path else None,
        "cluster": loaded.config.scheduler.cluster, "job_id": None, **meta,
    })
    return session


def _job_script(loaded: LoadedConfig, session: Session, given: Path | None,
                render: bool) -> str | None:
    if given is not None:
        try:
            return given.read_text()
        except (OSError, UnicodeDecodeError):
            return None  # kept for the user when readable; not required
    if not render:
        return None
    from hpcdesk.login import jobscript  # jinja2 is needed to submit only, not to list or watch

    return jobscript.render(loaded.config, session.id, session.dir)
