#!/usr/bin/env python3
"""Regenerate the configuration reference in docs/reference.md from the schema."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hpcdesk.config import render_reference  # noqa: E402

START, END = "<!-- reference:start -->", "<!-- reference:end -->"


def updated(text: str) -> str:
    block = f"{START}\n{render_reference()}\n{END}"
    return re.sub(re.escape(START) + r".*?" + re.escape(END), lambda _m: block, text, flags=re.S)


if __name__ == "__main__":
    page = ROOT / "docs" / "reference.md"
    page.write_text(updated(page.read_text()))
