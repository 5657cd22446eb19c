"""The Makefile's entry points: `make demo` does not wait for pyslurm (minutes of building that
the demo does not use) nor for the test and docs tools; `make test` still installs both (the
pyslurm backend's tests and the tools need them)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import tomllib
from tooling import require

ROOT = Path(__file__).resolve().parents[2]


def planned(target: str) -> list[str]:
    """The commands `make TARGET` would run, as make prints them (nothing is run)."""
    require("make", package="make")
    out = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True,
                         text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def test_demo_does_not_build_pyslurm() -> None:
    steps = planned("demo")
    setups = [s for s in steps if "scripts/setup.sh" in s]
    assert setups and all("--no-pyslurm" in s.split() for s in setups), steps
    assert not any("build-pyslurm" in s for s in steps), steps
    assert any("hpcdesk submit --site devcluster" in s for s in steps), steps


def test_test_builds_pyslurm() -> None:
    assert "bash scripts/setup.sh" in planned("test")


def setup_runs(target: str) -> list[list[str]]:
    """The scripts/setup.sh command lines `make TARGET` would run."""
    return [shlex.split(s) for s in planned(target) if "scripts/setup.sh" in s]


def requirements_of(setup_argv: list[str], tmp: Path) -> Path:
    """The requirements file scripts/setup.sh would install with these options (it says so
    itself, installing nothing). Run unprivileged, into a throwaway venv path: a setup.sh that
    does not know --print-requirements refuses to run instead of installing."""
    require("setpriv", package="util-linux")
    drop = (["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
            if os.geteuid() == 0 else [])
    proc = subprocess.run([*drop, "env", f"HPCDESK_VENV={tmp}/venv", f"HPCDESK_CACHE={tmp}",
                           *setup_argv, "--print-requirements"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.strip())


def pinned(requirements: Path) -> dict[str, str]:
    """Package name -> version of a pip requirements file, following its `-r` includes."""
    pins: dict[str, str] = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            pins.update(pinned(requirements.parent / line[3:].strip()))
        elif line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def the_test_extra() -> set[str]:
    """pyproject.toml's `test` extra (tools, and libraries the tests use that selkies also
    needs at run time: aiohttp, Pillow)."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    return {canonical(re.split(r"[<>=!~\[ ]", spec)[0]) for spec in extras["test"]}


# What only tests, lint and the docs build run.
TOOLS = {"pytest", "hypothesis", "ruff", "mypy", "types-pyyaml", "mkdocs"}


def test_demo_installs_no_test_or_docs_tools(tmp_path: Path) -> None:
    runs = setup_runs("demo")
    assert runs, planned("demo")
    assert the_test_extra() >= TOOLS
    for argv in runs:
        pins = pinned(requirements_of(argv, tmp_path))
        assert "selkies" in pins and "pyyaml" in pins  # the runtime is there
        assert TOOLS.isdisjoint(pins), sorted(TOOLS & set(pins))
        assert "pyslurm" not in pins


def test_setup_installs_the_tools_with_the_same_pins(tmp_path: Path) -> None:
    (argv,) = setup_runs("setup")
    full = pinned(requirements_of(argv, tmp_path))
    demo = pinned(requirements_of(setup_runs("demo")[0], tmp_path))
    assert the_test_extra() <= set(full), sorted(the_test_extra() - set(full))
    assert demo.items() <= full.items()  # the demo's venv is a part of the test venv
