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
# Tests of the GPU-less path, on a machine that has a GPU: the mirror image of the above.
GPU_PRESENT_PREFIX = "NVIDIA GPU present"
ALLOWED_SKIPS = (GPU_SKIP_PREFIX, GPU_PRESENT_PREFIX)


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


def skip_with_gpu(reason: str) -> None:
    """A test of the software path cannot run where an NVIDIA GPU is present."""
    pytest.skip(f"{GPU_PRESENT_PREFIX}: {reason}")


def skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


class SkipPolicy:
    """Under `make test`, a skip for anything but the GPU fails the whole run.

    Registered by tests/conftest.py, so the check is part of the suite (not of CI's script):
    a new test that skips for a missing tool turns `make test` red, listing it.
    """

    def __init__(self) -> None:
        self.refused: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not strict() or not report.skipped or hasattr(report, "wasxfail"):
            return
        reason = skip_reason(report)
        if not reason.startswith(ALLOWED_SKIPS):
            self.refused.append((report.nodeid, reason))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.refused and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.refused:
            return
        terminalreporter.section("skips refused under make test", red=True)
        for nodeid, reason in self.refused:
            terminalreporter.line(f"SKIP REFUSED {nodeid}: {reason}")
        terminalreporter.line(f"{len(self.refused)} test(s) skipped for something other than a "
                              "missing NVIDIA GPU: install what they name (scripts/setup.sh).")
