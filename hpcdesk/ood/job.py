"""Inside the OOD job: before.sh makes the session directory (so `hpcdesk list`, `status`,
`logs` and `tunnel` see the desktop), script.sh runs the node agent on it, and after.sh waits
here until the agent says ready (or why it is not).

The session is made in the job, not on the dashboard: a form that sbatch refuses leaves no
session behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcdesk.commands.submit import build_request
from hpcdesk.errors import UsageError
from hpcdesk.files import atomic_write, read_json, write_json
from hpcdesk.ood.form import check
from hpcdesk.phases import FAILED, READY, STOPPED, STOPPING
from hpcdesk.quoting import shq
from hpcdesk.session import Session, create, now, session_root

POLL_MAX = 1.0   # seconds between looks at node.json once the agent runs
AGENT_GRACE = 60  # seconds the agent has beyond timeouts.start to say ready or why not


def start(site: str | None, values: Mapping[str, Any], job_script: Path | None) -> Session:
    """Validate the form again (the same check as the dashboard's) and make the session."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise UsageError("`hpcdesk ood start` runs inside the OOD job (no SLURM_JOB_ID)")
    loaded = check(site, values).loaded
    cfg = loaded.config
    root = session_root(cfg.session_root)
    try:
        session = create(root)
    except OSError as exc:
        raise UsageError(f"cannot create a session directory under {root}: {exc.strerror}",
                         hint="set session_root to a writable directory the nodes share") from None
    request = build_request(loaded, session.id)
    atomic_write(session.path("request.json"), request.to_json() + "\n", mode=0o644)
    if job_script:
        with contextlib.suppress(OSError):  # kept for the user when readable; not required
            shutil.copyfile(job_script, session.path("job.sh"))
            os.chmod(session.path("job.sh"), 0o600)
    write_json(session.path("session.json"), {
        "id": session.id, "created": now(), "site": cfg.name,
        "site_file": str(loaded.site_path) if loaded.site_path else None,
        "cluster": cfg.scheduler.cluster, "job_id": job_id, "submitted": now(),
        "origin": "ood", "ood_work_dir": os.getcwd(),
    })
    return session


class NotReady(Exception):
    """The desktop will not become ready; the message is the agent's reason."""


def wait(session_dir: Path, agent_pid: int | None) -> dict[str, Any]:
    """Block until the agent reports ready; return connection.json. NotReady says why not."""
    session = Session(session_dir)
    request = read_json(session.path("request.json")) or {}
    deadline = time.monotonic() + int(request.get("start_timeout", 300)) + AGENT_GRACE
    delay = 0.1
    while True:
        node = session.node_state()
        phase = node.get("phase")
        if phase == READY:
            conn = session.connection()
            if conn:
                return conn
        elif phase in (FAILED, STOPPED, STOPPING):
            raise NotReady(str(node.get("reason") or node.get("detail") or phase))
        if agent_pid is not None and not _alive(agent_pid):
            node = session.node_state()
            if node.get("phase") != READY:
                raise NotReady(str(node.get("reason") or node.get("detail") or
                                   f"the node agent exited; see {session.path('agent.log')}"))
        if time.monotonic() > deadline:
            raise NotReady(f"the desktop did not become ready in time (last phase: "
                           f"{phase or 'none'}); see {session.path('agent.log')}")
        time.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def shell_assignments(conn: Mapping[str, Any]) -> str:
    """What after.sh evals: the names OOD's create_yml writes to connection.yml."""
    return "".join(f"{name}={shq(conn.get(key) or '')}\n"
                   for name, key in (("host", "host"), ("port", "port"), ("token", "token"),
                                     ("hpcdesk_session", "session")))
