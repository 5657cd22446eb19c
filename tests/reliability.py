"""The docs' "Reliability" table (docs/reliability.md) comes from the test run, not by hand.

A test marked `@pytest.mark.reliability("scenario", "expected")` is a row (several tests may
share a scenario: the row passes when all of them did). At the end of a run the rows are
merged into build/reliability.json (or $HPCDESK_RELIABILITY_OUT; a test's latest result
counts), and
scripts/update-docs-reliability.py puts them into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Generator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("HPCDESK_RELIABILITY_OUT", REPO / "build" / "reliability.json"))


MARK = re.compile(r'@pytest\.mark\.reliability\(\s*"([^"]+)",\s*"([^"]+)"(?:\s*"([^"]+)")?')


def marked_scenarios(root: Path = REPO) -> dict[str, str]:
    """{scenario: expected} for every test marked `reliability` in the source."""
    found: dict[str, str] = {}
    for path in sorted((root / "tests").rglob("test_*.py")):
        for m in MARK.finditer(path.read_text()):
            found[m[1]] = m[2] + (m[3] or "")
    return found


class ReliabilityTable:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, object]] = {}

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
            self, item: pytest.Item, call: pytest.CallInfo[None],
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        marker = item.get_closest_marker("reliability")
        if marker is not None:
            scenario, expected = marker.args
            row = self.rows.setdefault(scenario, {"scenario": scenario, "expected": expected,
                                                  "tests": {}, "seconds": 0.0})
            tests: dict[str, str] = row["tests"]  # type: ignore[assignment]
            before = tests.get(item.nodeid)
            if report.failed:
                tests[item.nodeid] = "failed"
            elif report.when == "call" and before != "failed":
                tests[item.nodeid] = report.outcome
            elif report.skipped and before is None:
                tests[item.nodeid] = "skipped"
            row["seconds"] = round(float(row["seconds"]) + report.duration, 1)  # type: ignore[arg-type]
        return report

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.rows:
            return
        old = json.loads(OUT.read_text()) if OUT.exists() else {"rows": {}}
        rows = old.get("rows", {})
        for scenario, row in self.rows.items():
            # A later run (the cluster tests after the unit tests) adds to a scenario's tests.
            earlier = rows.get(scenario, {}).get("tests", {})
            row["tests"] = {**earlier, **row["tests"]}  # type: ignore[dict-item]
            results = list(row["tests"].values())  # type: ignore[attr-defined]
            failed = sum(1 for r in results if r != "passed")
            row["result"] = ("passed" if not failed else
                             f"FAILED ({failed} of {len(results)} tests)")
            row["at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            rows[scenario] = row
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(json.dumps({"rows": rows}, indent=2, sort_keys=True) + "\n")
