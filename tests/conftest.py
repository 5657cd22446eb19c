"""Tests import hpcdesk from this checkout (the cluster harness installs the same checkout
into the shared venv for the nodes). Under `make test` only GPU skips are allowed (tooling.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytest
from tooling import SkipPolicy


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipPolicy(), "hpcdesk-skip-policy")
