"""Files other processes may read at any moment: atomic writes, JSON state files, log tails.

Generic helpers shared by the login side, the node agent and the laptop: they import nothing
from hpcdesk.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: str, mode: int = 0o600) -> None:
    """Write a file so readers see the old or the new content, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_json(path: Path, data: dict[str, Any], mode: int = 0o600) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True) + "\n", mode)


def tail_lines(path: Path, lines: int) -> str:
    """The last `lines` lines of a (log) file, reading only its end; 0 means all of it."""
    start = 0
    try:
        with open(path, "rb") as fh:
            if lines:
                fh.seek(0, os.SEEK_END)
                start = max(0, fh.tell() - 512 * lines)
                fh.seek(start)
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    rows = text.splitlines()[1 if start else 0:]  # the first one may be cut
    return "\n".join(rows[-lines:] if lines else rows)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
