"""The user's private cache of results that are costly to recompute on every command (the
validated configuration, the pyslurm release check): small JSON files in
$XDG_CACHE_HOME/hpcdesk (default ~/.cache/hpcdesk), each entry stored under a key that names
the identity of everything the result was made from (files by device, inode, size, mtime and
ctime), so any change to a source is a miss.

A cache file is trusted only if this user could have written it and nobody else could: the
file and its directory are owned by the user and neither is group- or world-writable, and the
file is no symlink. Anything else is ignored (and not overwritten). Reads and writes never
fail a command: a cache that cannot be used is a miss.

Tiny on purpose (os and json only): `hpcdesk list` and `status` read it on every start.
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

ENTRIES = 8  # per file: e.g. a few --site / --set combinations


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "hpcdesk")


def identity(path: str) -> list[Any] | None:
    """What a file is now (path, device, inode, size, mtime, ctime), or None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_entries(path: str) -> list[Any] | None:
    """The file's entries if it is this user's own and private, else None."""
    try:
        if not _private(os.stat(os.path.dirname(path))):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _private(st):
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = json.loads(fh.read())
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, list) else None


def get(name: str, key: Any) -> Any | None:
    """The value stored under `key` in cache file `name`, or None."""
    for entry in _read_entries(os.path.join(cache_dir(), name)) or []:
        if isinstance(entry, dict) and entry.get("key") == key:
            return entry.get("value")
    return None


def put(name: str, key: Any, value: Any) -> None:
    """Store `value` under `key` (JSON-serialisable), keeping the newest ENTRIES entries."""
    from pathlib import Path

    from hpcdesk.files import atomic_write

    directory = cache_dir()
    path = os.path.join(directory, name)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _private(os.stat(directory)):
            return  # a directory someone else could write to: never cache there
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            old: list[Any] = []
        else:
            if not stat.S_ISREG(st.st_mode) or not _private(st):
                return  # not ours: leave it alone
            old = _read_entries(path) or []
        entries = [{"key": key, "value": value}]
        entries += [e for e in old if isinstance(e, dict) and e.get("key") != key]
        atomic_write(Path(path), json.dumps({"entries": entries[:ENTRIES]}), mode=0o600)
    except (OSError, TypeError, ValueError):
        return
