"""Who may change a path: the checks made before a session's files or an image are used.

The node agent runs the commands that request.json names, and the apptainer runtime runs
the image that a content-derived file name in image_dir points to. Whoever can write those
files, or replace them by renaming in a directory above, chooses what runs as the user. So:

- the session root, the session directory and request.json must belong to the user and be
  writable by nobody else;
- every directory above the session root must belong to the user or root and, if others can
  write it, carry the sticky bit (as /tmp does: nobody can then rename another's entries);
- an image directory and its image files must belong to the user or root and be writable by
  nobody else (a sticky bit does not help: anyone could create the predictable name first).

Shared by both sides: imports nothing login-side.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from hpcdesk.errors import UsageError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


class UntrustedPath(UsageError):
    """A path another user could have written or could still replace."""


def owner_name(uid: int) -> str:
    """"alice (uid 1001)": how logs and errors name who owns or holds something."""
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _lstat(path: Path, what: str) -> os.stat_result:
    try:
        return path.lstat()
    except OSError as exc:
        raise UntrustedPath(f"cannot check {what} {path}: {exc.strerror}") from None


def require_own(path: Path, what: str, uid: int | None = None) -> None:
    """`path` (not a symlink) belongs to the user and only the user can write it."""
    me = os.getuid() if uid is None else uid
    st = _lstat(path, what)
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedPath(f"{what} {path} is a symbolic link; refusing to use it",
                            hint="submit the desktop again with hpcdesk submit")
    if st.st_uid != me:
        raise UntrustedPath(
            f"{what} {path} belongs to {owner_name(st.st_uid)}, not to you: refusing to run "
            "anything from it", hint=f"move it away and submit again; ask your admins who made "
            f"{path}")
    if mode & _OTHERS_WRITE:
        raise UntrustedPath(f"{what} {path} is writable by others (mode {mode:04o}): refusing "
                            "to run anything from it", hint=f"chmod go-w {path} and submit again")


def require_safe_parents(path: Path, uid: int | None = None) -> None:
    """Every directory above `path` belongs to the user or root and, if others can write
    it, is sticky."""
    me = os.getuid() if uid is None else uid
    for parent in path.absolute().parents:
        st = _lstat(parent, "directory")
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, me):
            raise UntrustedPath(
                f"{parent}, above the session directory, belongs to {owner_name(st.st_uid)}: they "
                "could replace your session files", hint="point session_root at a directory "
                "of your own (your home, or your project space)")
        if mode & _OTHERS_WRITE and not mode & stat.S_ISVTX:
            raise UntrustedPath(
                f"{parent}, above the session directory, is writable by others without the "
                f"sticky bit (mode {mode:04o}): they could replace your session files",
                hint=f"chmod o-w,g-w {parent}, or point session_root elsewhere")


def check_session(session_dir: Path, uid: int | None = None) -> None:
    """The session root, the session directory and request.json are the user's alone."""
    session_dir = session_dir.absolute()
    require_safe_parents(session_dir.parent, uid)
    require_own(session_dir.parent, "the session root", uid)
    require_own(session_dir, "the session directory", uid)
    require_own(session_dir / "request.json", "the request file", uid)


def check_image(image: Path, uid: int | None = None) -> None:
    """An image and its directory belong to the user or root and nobody else can write
    them (a predictable image name in a shared writable directory is anyone's to plant)."""
    me = os.getuid() if uid is None else uid
    for path, what in ((image.parent, "image directory"), (image, "image")):
        st = path.stat()
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, me) or mode & _OTHERS_WRITE:
            raise UntrustedPath(
                f"{what} {path} can be written by others (owner {owner_name(st.st_uid)}, mode "
                f"{mode:04o}): anyone could have put an image under the expected name",
                hint="build images into a directory of your own (runtime.image_dir), or ask "
                "your admins to own the shared one (root, mode 0755)")
