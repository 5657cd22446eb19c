#!/usr/bin/env python3
"""Write docs/reliability.md's table from the last test run's build/reliability.json
(tests/reliability.py collects it from the tests marked `reliability`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from reliability import marked_scenarios  # noqa: E402

BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def table(rows: dict[str, dict[str, object]]) -> str:
    lines = ["| scenario | expected | result | tests | last run |", "|---|---|---|---|---|"]
    for scenario in sorted(rows):
        row = rows[scenario]
        names = dict.fromkeys(t.split("::")[-1].split("[")[0] for t in row["tests"])  # type: ignore[attr-defined]
        tests = ", ".join(f"`{n}`" for n in names)
        lines.append(f"| {scenario} | {row['expected']} | {row['result']} | {tests} | "
                     f"{row['at']} |")
    return "\n".join(lines)


def earlier_rows(block: str) -> dict[str, str]:
    """The table's rows as they are, by scenario."""
    return {line.split("|")[1].strip(): line for line in block.splitlines()
            if line.startswith("| ") and not line.startswith("| scenario")}


def main() -> int:
    src = Path(os.environ.get("HPCDESK_RELIABILITY_OUT", REPO / "build" / "reliability.json"))
    if not src.exists():
        print(f"{src} does not exist: run the tests first (make test)", file=sys.stderr)
        return 1
    rows = json.loads(src.read_text())["rows"]
    page = REPO / "docs" / "reliability.md"
    text = page.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    kept = earlier_rows(text[start:end])  # a partial run keeps the others' last results
    lines = [kept[k] for k in sorted(kept) if k not in rows and k in marked_scenarios(REPO)]
    for scenario, expected in marked_scenarios(REPO).items():
        if scenario not in kept:
            rows.setdefault(scenario, {"scenario": scenario, "expected": expected, "tests": {},
                                       "result": "NOT RUN", "at": "-"})
    rows = {k: v for k, v in rows.items() if k in marked_scenarios(REPO)}  # renamed ones go
    body = sorted([*table(rows).splitlines()[2:], *lines])
    page.write_text(text[:start] + "\n" + "\n".join([*table({}).splitlines(), *body]) + "\n"
                    + text[end:])
    print(f"docs/reliability.md: {len(rows)} reliability rows from {src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
