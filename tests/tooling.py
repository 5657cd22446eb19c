"""What a test needs from the machine, and what happens when it is missing.

Under `make test` (and so in CI) `HPCDESK_TEST_STRICT=1` is set: a missing tool FAILS the test
with the Debian package to install, because a skipped test proves nothing on the machine where
it matters. A developer running one file by hand without it gets a skip with the same message.
Only a missing NVIDIA GPU may skip under `make test` (`skip_without_gpu`); conftest.py checks
at the end of the run that nothing else was skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

STRICT_ENV = "HPCDESK_TEST_STRICT"
GPU_SKIP_PREFIX = "no NVIDIA GPU"


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def missing(tool: str) -> bool:
    """True if `tool` (a command name or an absolute path) is not there."""
    if os.path.isabs(tool):
        return not Path(tool).exists()
    return shutil.which(tool) is None


def require(*tools: str, package: str) -> None:
    """Fail (strict) or skip (by hand) unless every tool is installed; names the package."""
    absent = [t for t in tools if missing(t)]
    if not absent:
        return
    message = (f"{', '.join(absent)} not installed: apt-get install {package} "
               "(scripts/setup.sh installs it)")
    if strict():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def skip_without_gpu(reason: str) -> None:
    """The one skip allowed under `make test`: this machine has no NVIDIA GPU."""
    pytest.skip(f"{GPU_SKIP_PREFIX}: {reason}")
