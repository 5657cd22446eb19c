"""After the agent is SIGKILLed, the job's own janitor removes the node work directory and
the dead credentials (issue 19 row 9). Real processes, a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

from hpcdesk.node import janitor

AGENT = """
import json, os, signal, sys, tempfile
from pathlib import Path
from hpcdesk.node import janitor
sdir, sid = Path(sys.argv[1]), sys.argv[2]
janitor.start(sdir, sid)
work = Path(tempfile.mkdtemp(prefix=f"hpcdesk-{sid}-"))
(work / "tls.key").write_text("key")
(sdir / "connection.json").write_text(json.dumps({"password": "dead"}))
(sdir / "node.json").write_text(json.dumps({"phase": "ready"}))
print(work, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_sigkilled_agent_leaves_nothing_behind(tmp_path: Path) -> None:
    import subprocess
    import sys

    sid = f"j{os.getpid() % 100000:05d}"
    proc = subprocess.run([sys.executable, "-c", AGENT, str(tmp_path), sid],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    work = Path(proc.stdout.strip())
    assert work.parent == Path(tempfile.gettempdir())
    deadline = time.monotonic() + 30
    while (work.exists() or (tmp_path / "connection.json").exists()) and (
            time.monotonic() < deadline):
        time.sleep(0.05)
    assert not work.exists()
    assert not (tmp_path / "connection.json").exists()
    while json.loads((tmp_path / "node.json").read_text())["phase"] != "failed" and (
            time.monotonic() < deadline):
        time.sleep(0.05)
    node = json.loads((tmp_path / "node.json").read_text())
    assert node["phase"] == "failed" and "killed" in node["reason"]


def test_cleanup_touches_only_this_sessions_directories(tmp_path: Path) -> None:
    mine = Path(tempfile.mkdtemp(prefix="hpcdesk-zz9999-"))
    other = Path(tempfile.mkdtemp(prefix="hpcdesk-zz9998-"))
    try:
        removed = janitor.cleanup(tmp_path, "zz9999")
        assert str(mine) in removed and not mine.exists() and other.exists()
    finally:
        for d in (mine, other):
            if d.exists():
                d.rmdir()
