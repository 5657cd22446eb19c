"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdesk import config


@pytest.fixture
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration layers from tmp_path only: no user file, no $HPCDESK_SITE, no /etc."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HPCDESK_SITE", raising=False)
    monkeypatch.setattr(config, "SYSTEM_DIRS", (str(tmp_path / "etc"),))
