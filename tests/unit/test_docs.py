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
