"""Session directories: one per desktop, on a filesystem the login and compute nodes share.

Files (the login side writes the first group, the node agent the second):
  session.json   id, job id, cluster, site, created, last known state (login side)
  request.json   the validated DesktopRequest (no secrets)
  job.sh         the rendered Slurm job script, kept for the user
  notify.json    0600: where and how the agent may push progress to the waiting client
  job.out        Slurm's output of the job script
  agent.log      the node agent's log
  node.json      the agent's phase, node, display, port, timings and final reason
  connection.json 0600: how to reach the ready desktop (connection.py)
Shared by both sides: imports nothing login-side.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcdesk.errors import SessionNotFound
from hpcdesk.files import read_json, write_json

if TYPE_CHECKING:
    from hpcdesk.connection import Connection

_ID_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
# <session_root>/.active/<id>: one empty marker per session that has not ended, so that
# `list` and the waiters touch only live sessions however many old ones a user keeps.
ACTIVE_DIR = ".active"


class Session:
    """One session directory; equal when the directory is. A plain class: the start of
    `hpcdesk list` does without the dataclasses module (issue 23)."""

    __slots__ = ("_meta", "dir")
    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it was

    def __init__(self, dir: Path, _meta: dict[str, Any] | None = None) -> None:
        self.dir = dir
        self._meta = _meta

    def __repr__(self) -> str:
        return f"Session(dir={self.dir!r})"

    def __eq__(self, other: object) -> bool:
        return self.dir == other.dir if isinstance(other, Session) else NotImplemented

    @property
    def id(self) -> str:
        return self.dir.name

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def meta(self) -> dict[str, Any]:
        """session.json, read once per process (only this side writes it)."""
        if self._meta is None:
            self._meta = read_json(self.path("session.json")) or {}
        return dict(self._meta)

    def reload(self) -> dict[str, Any]:
        """session.json as it is now on disk (another process may have changed it)."""
        self._meta = None
        return self.meta

    def update_meta(self, **changes: Any) -> dict[str, Any]:
        meta = read_json(self.path("session.json")) or {}
        meta.update(changes)
        write_json(self.path("session.json"), meta)
        self._meta = meta
        if "final" in changes:
            with contextlib.suppress(OSError):
                (self.dir.parent / ACTIVE_DIR / self.id).unlink()
        return dict(meta)

    @property
    def job_id(self) -> str | None:
        job = self.meta.get("job_id")
        return str(job) if job else None

    def node_state(self) -> dict[str, Any]:
        return read_json(self.path("node.json")) or {}

    def connection(self) -> Connection | None:
        from hpcdesk.connection import Connection  # here: `list` never reads one

        return Connection.load(self.path("connection.json"))



def session_root(configured: str) -> Path:
    return Path(os.path.expandvars(configured)).expanduser()


def create(root: Path) -> Session:
    """Make a new private session directory with a short, unique, typeable id."""
    import secrets  # here, not at the top: list and status never create sessions

    from hpcdesk.trust import require_own, require_safe_parents

    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    require_safe_parents(root)  # nobody else may own, write or swap the session files
    require_own(root, "the session root")
    for _ in range(100):
        sid = "".join(secrets.choice(_ID_ALPHABET) for _ in range(6))
        d = root / sid
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        (root / ACTIVE_DIR).mkdir(mode=0o700, exist_ok=True)
        (root / ACTIVE_DIR / sid).touch(mode=0o600)
        return Session(d)
    raise RuntimeError(f"could not allocate a session directory under {root}")


def discard(session: Session) -> None:
    """Remove a session that never reached Slurm (nothing in it is worth keeping)."""
    import shutil

    shutil.rmtree(session.dir, ignore_errors=True)
    with contextlib.suppress(OSError):
        (session.dir.parent / ACTIVE_DIR / session.id).unlink()


def all_sessions(root: Path, include_ended: bool = True) -> list[Session]:
    """Sessions oldest first; without include_ended only those not known to have ended."""
    if not root.is_dir():
        return []
    if include_ended:
        dirs = [d for d in root.iterdir() if not d.name.startswith(".")]
    else:
        active = root / ACTIVE_DIR
        dirs = [root / m.name for m in active.iterdir()] if active.is_dir() else []
    found = [Session(d) for d in dirs if (d / "session.json").exists()]
    return sorted(found, key=lambda s: s.meta.get("created", 0))


# What a user may type for a session: an id or its prefix, or a job id ("cluster:1234").
# Nothing else reaches a path: no "/", no leading "." or "-", no "..", no control characters.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_:-]{0,99}")
_ID = re.compile(f"[{_ID_ALPHABET}]{{6}}")


def is_session_id(sid: str) -> bool:
    """True for an id that `create` could have made (a plain directory name)."""
    return _ID.fullmatch(sid) is not None


def check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise SessionNotFound(f"{key!r} is not a session id or job id",
                              hint="use an id as `hpcdesk list` shows it (letters and digits)")
    return key


def find(root: Path, key: str) -> Session:
    """A session by id, unique id prefix, or Slurm job id ("1234" or "cluster:1234")."""
    check_key(key)
    if (root / key / "session.json").exists():
        return Session(root / key)
    sessions = all_sessions(root)
    by_job = [s for s in sessions if key in (s.job_id, f"{s.meta.get('cluster')}:{s.job_id}")]
    if by_job:
        return by_job[-1]
    prefix = [s for s in sessions if s.id.startswith(key)]
    if len(prefix) == 1:
        return prefix[0]
    if len(prefix) > 1:
        raise SessionNotFound(f"session {key!r} is ambiguous: " + ", ".join(s.id for s in prefix))
    raise SessionNotFound(f"no session {key!r} under {root}",
                          hint="`hpcdesk list` shows your sessions")


def now() -> float:
    return round(time.time(), 3)
