"""Inside the OOD job: before.sh makes the session directory (so `hpcdesk list`, `status`,
`logs` and `tunnel` see the desktop), script.sh runs the node agent on it, and after.sh waits
here until the agent says ready (or why it is not).

The session is made in the job, not on the dashboard: a form that sbatch refuses leaves no
session behind.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcdesk.connection import Connection
from hpcdesk.errors import UsageError
from hpcdesk.files import read_json
from hpcdesk.login.prepare import prepare
from hpcdesk.login.waiting import START_GRACE
from hpcdesk.ood.form import check
from hpcdesk.phases import READY, STOPPING, desktop_state
from hpcdesk.quoting import shq
from hpcdesk.session import Session, now

POLL_MAX = 1.0   # seconds between looks at node.json once the agent runs


def start(site: str | None, values: Mapping[str, Any], job_script: Path | None) -> Session:
    """Validate the form again (the same check as the dashboard's) and make the session, as
    `hpcdesk submit` makes its own (login.prepare)."""
    job_id = os.environ.get("SLURM_JOB_ID")
    if not job_id:
        raise UsageError("`hpcdesk ood start` runs inside the OOD job (no SLURM_JOB_ID)")
    loaded = check(site, values).loaded
    return prepare(loaded, job_script, render=False, job_id=job_id, submitted=now(),
                   origin="ood", ood_work_dir=os.getcwd())


class NotReady(Exception):
    """The desktop will not become ready; the message is the agent's reason."""


def wait(session_dir: Path, agent_pid: int | None) -> Connection:
    """Block until the agent reports ready; return connection.json. NotReady says why not.
    The agent's record is read as everywhere else (phases.desktop_state), with the waiter's
    grace beyond timeouts.start (login.waiting.START_GRACE)."""
    session = Session(session_dir)
    request = read_json(session.path("request.json")) or {}
    deadline = time.monotonic() + int(request.get("start_timeout", 300)) + START_GRACE
    delay = 0.1
    while True:
        desktop = desktop_state(session.node_state())
        if desktop.state == READY:
            conn = session.connection()
            if conn:
                return conn
        elif desktop.ended or desktop.state == STOPPING:
            raise NotReady(desktop.detail)
        if agent_pid is not None and not _alive(agent_pid):
            desktop = desktop_state(session.node_state())
            if desktop.state != READY:
                raise NotReady(desktop.detail if desktop.phase else
                               f"the node agent exited; see {session.path('agent.log')}")
        if time.monotonic() > deadline:
            raise NotReady(f"the desktop did not become ready in time (last phase: "
                           f"{desktop.phase or 'none'}); see {session.path('agent.log')}")
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


def screen_size(node: Mapping[str, Any]) -> str:
    """The desktop's real screen size (the dummy driver may not give the mode asked for)."""
    display, xauth = node.get("display"), node.get("xauthority")
    if not display:
        return ""
    env = {**os.environ, "DISPLAY": str(display)}
    if xauth:
        env["XAUTHORITY"] = str(xauth)
    try:
        out = subprocess.run(["xdpyinfo"], capture_output=True, text=True, timeout=10,
                             env=env, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"dimensions:\s+(\d+x\d+) pixels", out)
    return m.group(1) if m else ""


def _card_text(value: object) -> str:
    """A value connection.yml can carry as a single-quoted YAML scalar through OOD's
    `echo -e`: no quote, no backslash, no control character."""
    return "'" + re.sub(r"[^A-Za-z0-9 .,;:()/_+=@%<>-]", " ", str(value or "")).strip() + "'"


def card(session_dir: Path, conn: Mapping[str, Any]) -> dict[str, str]:
    """What the OOD card shows: node, screen size, encoder (and why), when the job ends."""
    session = Session(session_dir)
    request = read_json(session.path("request.json")) or {}
    limit = int(request.get("time_limit") or 0)
    started = float(conn.get("started_at") or 0)
    return {
        "hpcdesk_node": _card_text(conn.get("node")),
        "hpcdesk_resolution": _card_text(screen_size(session.node_state())),
        "hpcdesk_encoder": _card_text(conn.get("encoder")),
        "hpcdesk_encoder_note": _card_text(conn.get("encoder_reason")),
        "hpcdesk_ends": str(int(started + limit)) if limit and started else "0",
    }


def shell_assignments(conn: Mapping[str, Any], extra: Mapping[str, str] | None = None) -> str:
    """What after.sh evals: the names OOD's create_yml writes to connection.yml."""
    pairs = [(name, str(conn.get(key) or "")) for name, key in (
        ("host", "host"), ("port", "port"), ("token", "token"), ("hpcdesk_session", "session"))]
    pairs += list((extra or {}).items())
    return "".join(f"{name}={shq(value)}\n" for name, value in pairs)
