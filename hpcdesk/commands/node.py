"""`hpcdesk node run`: the job script hands over to the node agent."""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcdesk.errors import UsageError


def run(args: argparse.Namespace) -> int:
    session_dir = Path(args.session)
    if not (session_dir / "request.json").is_file():
        raise UsageError(f"{session_dir} is not a session directory (no request.json)")
    from hpcdesk.node.agent import run as run_agent

    return run_agent(session_dir)
