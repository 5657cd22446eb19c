"""The Makefile's entry points: `make demo` does not wait for pyslurm (minutes of building that
the demo does not use); `make test` still builds it (the pyslurm backend's tests need it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tooling import require

ROOT = Path(__file__).resolve().parents[2]


def planned(target: str) -> list[str]:
    """The commands `make TARGET` would run, as make prints them (nothing is run)."""
    require("make", package="make")
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True,
                         text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_demo_does_not_build_pyslurm() -> None:
    steps = planned("demo")
    setups = [s for s in steps if "scripts/setup.sh" in s]
    assert setups and all(s.endswith("--no-pyslurm") for s in setups), steps
    assert not any("build-pyslurm" in s for s in steps), steps
    assert any("hpcdesk submit --site devcluster" in s for s in steps), steps


def test_test_builds_pyslurm() -> None:
    assert "bash scripts/setup.sh" in planned("test")
