"""The job's own cleanup when the node agent dies without cleaning up (SIGKILL, OOM killer).

The agent normally removes its node-local work directory (TLS key, X cookie, the container's
/tmp) and the dead credentials in connection.json itself. A process killed with SIGKILL
cannot, so before anything else the agent starts a janitor: a detached process (not the
agent's descendant, so the agent's own cleanup never kills it) that ignores the job's
signals and blocks on a pipe whose only write end the agent holds. The pipe reads EOF the
moment the agent is gone, however it ended; the janitor then removes what is left, records
the end in node.json if the agent could not, and exits. After a normal end there is nothing
left to remove and it exits at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
from pathlib import Path

from hpcdesk.files import read_json, write_json
from hpcdesk.phases import FAILED, STOPPED
from hpcdesk.session import now

_agent_end: int | None = None  # the write end, held (never written) for the agent's life


def start(session_dir: Path, session_id: str) -> None:
    """Fork the janitor for this agent (call once, before any thread or child exists)."""
    global _agent_end
    read_end, write_end = os.pipe()  # not inherited by the desktop's processes (CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the forked child
        try:
            os.close(write_end)
            if os.fork():
                os._exit(0)  # the grandchild is adopted by init: no longer our descendant
            os.setsid()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                        signal.SIGUSR2, signal.SIGCONT):
                signal.signal(sig, signal.SIG_IGN)
            while os.read(read_end, 1):
                pass
            cleanup(session_dir, session_id)
        finally:
            os._exit(0)
    os.close(read_end)
    os.waitpid(pid, 0)
    _agent_end = write_end


def work_dirs(session_id: str, uid: int | None = None) -> list[Path]:
    """The agent's node-local work directories of this session (tempfile.mkdtemp's)."""
    me = os.getuid() if uid is None else uid
    found = []
    for path in Path(tempfile.gettempdir()).glob(f"hpcdesk-{session_id}-*"):
        with contextlib.suppress(OSError):
            st = path.lstat()
            if stat.S_ISDIR(st.st_mode) and st.st_uid == me:
                found.append(path)
    return found


def cleanup(session_dir: Path, session_id: str) -> list[str]:
    """Remove what a dead agent left behind; returns what was removed."""
    removed = []
    for path in work_dirs(session_id):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(str(path))
    conn = session_dir / "connection.json"
    with contextlib.suppress(OSError):
        conn.unlink()
        removed.append(str(conn))
    node = read_json(session_dir / "node.json")
    if node is not None and node.get("phase") not in (STOPPED, FAILED):
        reason = (f"the node agent on {node.get('node') or 'its node'} was killed or died "
                  f"while the desktop was {node.get('phase') or 'starting'} (SIGKILL or out of "
                  f"memory); its node files were removed; see `hpcdesk logs {session_id}`, "
                  "then submit again")
        node.update(phase=FAILED, detail=reason, reason=reason, outcome=FAILED, updated=now())
        node.setdefault("times", {})["ended"] = now()
        if removed:
            node["cleaned_up_by_janitor"] = removed
        write_json(session_dir / "node.json", node, mode=0o644)
    return removed
