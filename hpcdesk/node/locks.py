"""Node-wide exclusive claims (ports, X displays) held by flock for a session's lifetime.

The lock directory is shared by every user's agents on the node (mode 1777, like /tmp); a
claim is an exclusive, non-blocking flock on one file in it, released when its fd closes
(also when the agent dies), so a crashed agent never leaves a stale claim behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


def try_claim(lock_dir: Path, name: str) -> int | None:
    """The open fd holding the claim on `name`, or None if another agent holds it."""
    with contextlib.suppress(FileExistsError):
        lock_dir.mkdir(parents=True)
        os.chmod(lock_dir, 0o1777)  # noqa: S103 - shared by all users' agents, sticky
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
