"""`hpcdesk node run`: the job script hands over to the node agent."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcdesk.errors import UsageError


def run(args: argparse.Namespace) -> int:
    session_dir = Path(args.session)
    if not (session_dir / "request.json").is_file():
        raise UsageError(f"{session_dir} is not a session directory (no request.json)")
    from hpcdesk.request import DesktopRequest
    from hpcdesk.session import is_session_id
    from hpcdesk.trust import check_session

    # Before anything in request.json is read, let alone run: it must be the user's alone.
    check_session(session_dir)

    # The id names node-local paths (the work directory under /tmp): it must be the plain
    # directory name that `hpcdesk submit` made, never a path.
    sid = DesktopRequest.load(session_dir / "request.json").session_id
    if not is_session_id(sid) or sid != session_dir.resolve().name:
        raise UsageError(f"{session_dir}/request.json names session {sid!r}, not this "
                         "directory's id", hint="submit the desktop again with hpcdesk submit")
    from hpcdesk.node.agent import run as run_agent

    return run_agent(session_dir)
