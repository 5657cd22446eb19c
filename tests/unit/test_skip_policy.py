"""The suite's own rule: under `make test` nothing but a missing GPU may skip (tooling.py)."""

from __future__ import annotations

import pytest
from tooling import STRICT_ENV, SkipPolicy, require

INNER = """
import pytest
from tooling import require, skip_without_gpu

def test_missing_tool():
    require("no-such-tool-hpcdesk", package="no-such-package")

def test_plain_skip():
    pytest.skip("shellcheck is not installed")

def test_gpu():
    skip_without_gpu("needs NVML")

def test_fine():
    pass
"""


def run_inner(pytester: pytest.Pytester) -> pytest.RunResult:
    pytester.makepyfile(test_inner=INNER)
    return pytester.runpytest_inprocess("-rs", plugins=[SkipPolicy()])


def test_under_make_test_a_missing_tool_fails_and_a_skip_is_refused(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    result = run_inner(pytester)
    result.assert_outcomes(passed=1, failed=1, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([
        "*no-such-tool-hpcdesk not installed: apt-get install no-such-package*",
        "*SKIP REFUSED test_inner.py::test_plain_skip: shellcheck is not installed",
        "1 test(s) skipped for something other than a missing NVIDIA GPU*",
    ])
    assert "SKIP REFUSED test_inner.py::test_gpu" not in result.stdout.str()


def test_by_hand_a_missing_tool_skips_with_the_package(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_ENV, raising=False)
    result = run_inner(pytester)
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*apt-get install no-such-package*"])
    assert "SKIP REFUSED" not in result.stdout.str()


def test_require_passes_for_an_installed_tool() -> None:
    require("sh", package="dash")
