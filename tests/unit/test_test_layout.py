"""The suite's own layout: pytest (rootdir-relative imports, no __init__.py) refuses two test
modules with one basename, and then collects nothing at all."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []


ROOT = TESTS.parent
# What tests and benchmarks share lives in harness/ (never in tests/cluster): imported from the
# repository root, which pytest puts on the path and `python -m benchmarks.NAME` starts in.
SHARING = [*sorted((ROOT / "benchmarks").glob("*.py")), *sorted((ROOT / "harness").glob("*.py")),
           *sorted((TESTS / "cluster").glob("*.py")), *sorted((TESTS / "unit").glob("*.py")),
           TESTS / "conftest.py"]


def test_no_module_edits_the_import_path() -> None:
    edits = [f"{p.relative_to(ROOT)}:{n}" for p in SHARING
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if "sys.path" in line and p != Path(__file__).resolve()]
    assert edits == []


def test_benchmarks_run_as_modules_of_the_repository() -> None:
    """Each benchmark's imports resolve the way `make bench` runs it (`--help` only)."""
    names = [p.stem for p in sorted((ROOT / "benchmarks").glob("*.py")) if p.stem != "__init__"]
    assert "stream" in names and "scale" in names
    for name in names:
        proc = subprocess.run([sys.executable, "-m", f"benchmarks.{name}", "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"benchmarks.{name}: {proc.stderr[-2000:]}"
