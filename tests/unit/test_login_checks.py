"""`hpcdesk doctor` on the login side: each failed check names its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk import config
from hpcdesk.login import login_checks

# Configuration layers from tmp_path only (the one fixture, tests/conftest.py).
pytestmark = pytest.mark.usefixtures("isolated_config")


def site(tmp_path: Path, text: str) -> str:
    p = tmp_path / "site.yaml"
    p.write_text(text)
    return str(p)


def test_bad_config_is_one_failed_check_with_a_fix(tmp_path: Path) -> None:
    checks = login_checks.login_checks(site(tmp_path, "desktop:\n  width: 1\n"))
    assert [c.name for c in checks] == ["configuration"]
    assert checks[0].status == "fail" and "desktop.width" in checks[0].detail and checks[0].fix


def test_session_directory_checks(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    loaded = config.load(site(tmp_path, f"session_root: {root}\n"))
    checks = {c.name: c for c in login_checks._session_dir_checks(loaded)}
    assert checks["session directory"].status == "ok"
    shared = checks["shared filesystem"]
    assert shared.status in ("ok", "warn") and (shared.status == "ok" or shared.fix)
    root.chmod(0o755)
    checks = {c.name: c for c in login_checks._session_dir_checks(loaded)}
    assert checks["session directory mode"].status == "warn"
    assert "chmod 700" in checks["session directory mode"].fix


def test_unwritable_session_directory(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    loaded = config.load(site(tmp_path, f"session_root: {blocker}/sub\n"))
    (check,) = login_checks._session_dir_checks(loaded)
    assert check.status == "fail" and "session_root" in check.fix


def test_missing_image_is_a_failed_check(tmp_path: Path) -> None:
    loaded = config.load(site(tmp_path, "runtime:\n  kind: apptainer\n"
                              f"  image: {tmp_path}/missing.sif\n"))
    image = [c for c in login_checks._runtime_checks(loaded) if c.name == "image"]
    assert image[0].status == "fail" and "hpcdesk image build" in image[0].fix


def test_filesystem_type_of_a_path() -> None:
    assert login_checks._fs_type(Path("/proc/self")) == "proc"
