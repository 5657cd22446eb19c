"""Tests import hpcdesk from this checkout (pyproject.toml's pytest `pythonpath`; the cluster
harness installs the same checkout into the shared venv for the nodes) and the shared
harness/ beside it. Under `make test` only GPU skips are allowed (tooling.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability import ReliabilityTable
from tooling import SkipPolicy


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(), "hpcdesk-skip-policy")
    config.pluginmanager.register(ReliabilityTable(), "hpcdesk-reliability")


@pytest.fixture
def isolated_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Configuration layers from tmp_path only: no user file, no $HPCDESK_SITE, no /etc.
    (Here, not in a tests/unit/conftest.py: a second module named conftest would shadow
    tests/cluster/conftest.py for the cluster tests' imports.)"""
    from hpcdesk import config

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HPCDESK_SITE", raising=False)
    monkeypatch.setattr(config, "SYSTEM_DIRS", (str(tmp_path / "etc"),))
