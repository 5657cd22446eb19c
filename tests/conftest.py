"""Tests import hpcdesk from this checkout (the cluster harness installs the same checkout
into the shared venv for the nodes)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
