"""The README's configuration reference and example site files match the schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from hpcdesk import config

ROOT = Path(__file__).resolve().parents[2]


def test_readme_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("upd", ROOT / "scripts/update-readme-reference.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "README.md").read_text()
    assert mod.updated(text) == text, "run scripts/update-readme-reference.py"


@pytest.mark.parametrize("site", sorted((ROOT / "site-configs").glob("*.yaml")), ids=str)
def test_example_sites_validate(site: Path, monkeypatch: pytest.MonkeyPatch,
                                tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    loaded = config.load(str(site))
    assert loaded.site_path == site


def test_reliability_table_rows_are_the_marked_scenarios() -> None:
    """README's Reliability rows are written from a test run (scripts/update-readme-
    reliability.py): one row per scenario that tests are marked with, each with a result."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from reliability import marked_scenarios

    marked = marked_scenarios(ROOT)
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- reliability:begin -->", 1)[1].split("<!-- reliability:end -->")[0]
    rows = [line for line in block.splitlines()
            if line.startswith("| ") and not line.startswith("| scenario")]
    assert marked, "no test is marked as a reliability scenario"
    assert {line.split("|")[1].strip() for line in rows} == set(marked), (
        "run the tests, then scripts/update-readme-reliability.py")
    for line in rows:
        assert line.split("|")[3].strip() in ("passed", "NOT RUN") or "FAILED" in line, line
