"""The documentation: the site builds strictly (a broken link or a missing page fails), the
README stays a front door, the generated configuration reference matches the schema, the
Reliability table has a row per marked scenario, and the example site files validate."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcdesk import config

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    """mkdocs --strict: every nav entry has its page, every link and anchor resolves."""
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which(
        "mkdocs")
    assert mkdocs, "mkdocs is not installed: it is pinned in requirements/dev.txt " \
                   "(scripts/setup.sh installs it)"
    proc = subprocess.run([mkdocs, "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "site" / "reference" / "index.html").exists()


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The strict build is not a formality: a page that links to a page that is not there
    fails it."""
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    (docs / "users.md").write_text((docs / "users.md").read_text()
                                   + "\nSee [the old page](gone.md).\n")
    conf = (ROOT / "mkdocs.yml").read_text()
    (tmp_path / "mkdocs.yml").write_text(conf)
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    proc = subprocess.run([mkdocs, "build", "--strict", "-f", str(tmp_path / "mkdocs.yml"),
                           "-d", str(tmp_path / "site")], capture_output=True, text=True,
                          check=False)
    assert proc.returncode != 0 and "gone.md" in proc.stderr, proc.stderr


def test_readme_is_a_front_door() -> None:
    """Short, with the two fresh-machine commands, and every link it has resolves."""
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < README_MAX_LINES
    assert "make demo" in text and "make test" in text
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
        if not target.startswith(("http://", "https://")):
            assert (ROOT / target).exists(), f"README links to {target}, which is missing"


def test_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("upd", ROOT / "scripts/update-docs-reference.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = (ROOT / "docs/reference.md").read_text()
    assert mod.updated(text) == text, "run scripts/update-docs-reference.py"


@pytest.mark.parametrize("site", sorted((ROOT / "site-configs").glob("*.yaml")), ids=str)
def test_example_sites_validate(site: Path, monkeypatch: pytest.MonkeyPatch,
                                tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    loaded = config.load(str(site))
    assert loaded.site_path == site


def test_reliability_table_rows_are_the_marked_scenarios() -> None:
    """The Reliability rows are written from a test run (scripts/update-docs-reliability.py):
    one row per scenario that tests are marked with, each with a result."""
    from reliability import marked_scenarios

    marked = marked_scenarios(ROOT)
    text = (ROOT / "docs/reliability.md").read_text()
    block = text.split("<!-- reliability:begin -->", 1)[1].split("<!-- reliability:end -->")[0]
    rows = [line for line in block.splitlines()
            if line.startswith("| ") and not line.startswith("| scenario")]
    assert marked, "no test is marked as a reliability scenario"
    assert {line.split("|")[1].strip() for line in rows} == set(marked), (
        "run the tests, then scripts/update-docs-reliability.py")
    for line in rows:
        assert line.split("|")[3].strip() in ("passed", "NOT RUN") or "FAILED" in line, line
