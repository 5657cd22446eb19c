"""Session files and images are checked before anything runs (issue 19 row 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcdesk.trust import UntrustedPath, check_image, check_session


def _session(tmp_path: Path) -> Path:
    root = tmp_path / "sessions"
    sdir = root / "abc123"
    sdir.mkdir(parents=True, mode=0o700)
    root.chmod(0o700)
    (sdir / "request.json").write_text("{}")
    (sdir / "request.json").chmod(0o644)
    return sdir


def test_a_private_session_passes(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    check_session(_session(tmp_path))


@pytest.mark.parametrize(("what", "mode", "needle"), [
    ("request.json", 0o664, "writable by others"),
    ("", 0o770, "writable by others"),
    ("..", 0o777, "writable by others"),
])
def test_writable_by_others_is_refused(tmp_path: Path, what: str, mode: int, needle: str) -> None:
    tmp_path.chmod(0o755)
    sdir = _session(tmp_path)
    (sdir / what if what else sdir).chmod(mode)
    with pytest.raises(UntrustedPath, match=needle):
        check_session(sdir)


def test_someone_elses_files_are_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    sdir = _session(tmp_path)
    with pytest.raises(UntrustedPath, match="not to you"):
        check_session(sdir, uid=os.getuid() + 4242)


def test_a_parent_writable_by_others_without_sticky_bit_is_refused(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    with pytest.raises(UntrustedPath, match="without the sticky bit"):
        check_session(_session(tmp_path))
    tmp_path.chmod(0o1777)  # like /tmp: nobody can rename another's entries
    check_session(tmp_path / "sessions" / "abc123")


def test_an_image_in_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    sif = images / "debian-bookworm-0123456789abcdef.sif"
    sif.write_text("planted")
    images.chmod(0o755)
    sif.chmod(0o644)
    check_image(sif)
    images.chmod(0o1777)
    with pytest.raises(UntrustedPath, match="can be written by others"):
        check_image(sif)
