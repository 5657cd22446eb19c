"""On a laptop, hpcdesk's base dependencies are all `hpcdesk tunnel` needs, and its import
path touches nothing node-only (NVML, Xorg), login-only (Slurm, sessions) or POSIX-only.

A fresh virtual environment gets this checkout's hpcdesk and exactly the distributions its
pyproject.toml requires (base dependencies, transitively; copied from this environment, so no
network is needed). There, with fcntl, termios, pwd, grp and resource made unimportable as
on Windows, `hpcdesk tunnel --help` runs and the laptop package imports.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
POSIX_ONLY = ("fcntl", "termios", "pwd", "grp", "resource", "pty", "tty")
# The hpcdesk modules the laptop may load: nothing from node/, scheduler/, commands/ ...;
# connection.json's type and the file helpers it uses (stdlib only), as test_imports allows.
ALLOWED = re.compile(r"^hpcdesk(\.(__main__|cli|arguments|errors|quoting|encoders|states|connection|files"
                     r"|laptop(\..+)?))?$")

CHECK = f"""
import sys
for name in {POSIX_ONLY!r}:
    sys.modules[name] = None  # importing it raises ImportError, as on Windows
import importlib, pkgutil
import hpcdesk.laptop
for mod in pkgutil.iter_modules(hpcdesk.laptop.__path__):
    importlib.import_module("hpcdesk.laptop." + mod.name)
from hpcdesk import cli
try:
    cli.main(["tunnel", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
loaded = sorted(m for m in sys.modules if m == "hpcdesk" or m.startswith("hpcdesk."))
print("LOADED", " ".join(loaded))
"""


def closure(roots: list[str]) -> set[str]:
    """These requirements and every distribution they require, from this environment."""
    seen: set[str] = set()
    todo = [(r.name, tuple(r.extras)) for r in map(Requirement, roots)]
    while todo:
        dist_name, ex = todo.pop()
        dist = metadata.distribution(dist_name)
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        for text in dist.requires or []:
            req = Requirement(text)
            env = [{"extra": e} for e in ex] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(e) for e in env):
                todo.append((req.name, tuple(req.extras)))
    return seen


def copy_distribution(name: str, site: Path) -> None:
    dist = metadata.distribution(name)
    for file in dist.files or []:
        src = Path(str(dist.locate_file(file)))
        if src.is_file() and ".." not in file.parts:
            dest = site / file
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)


@pytest.fixture
def base_venv(tmp_path: Path) -> Path:
    """A fresh venv with this checkout's hpcdesk and its base dependencies only: its python."""
    env = tmp_path / "laptop"
    venv.create(env, with_pip=False)
    py = env / "bin/python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    deps = closure(base)
    assert {"paramiko", "sshtunnel"} <= deps, deps
    assert not deps & {"nvidia-ml-py", "selkies", "pyslurm", "aiohttp"}, deps
    for dep in sorted(deps):
        copy_distribution(dep, site)
    shutil.copytree(REPO / "hpcdesk", site / "hpcdesk",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return py


def test_fresh_venv_with_base_dependencies_runs_the_tunnel_path(base_venv: Path,
                                                                 tmp_path: Path) -> None:
    env = base_venv.parents[1]
    proc = subprocess.run([str(base_venv), "-I", "-c", CHECK], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usage: hpcdesk tunnel" in proc.stdout
    loaded = proc.stdout.split("LOADED", 1)[1].split()
    assert "hpcdesk.laptop.tunnel" in loaded
    assert [m for m in loaded if not ALLOWED.match(m)] == []
    assert sys.prefix != str(env)


def test_without_the_pyslurm_extra_auto_takes_the_commands_and_doctor_says_why(
        base_venv: Path, tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(base_venv), "-I", "-m", "hpcdesk", "doctor", "--json", "--set",
                           "scheduler.backend=auto"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    backend = checks["scheduler backend"]
    assert backend["status"] == "ok"
    assert backend["detail"].startswith("slurm-cli (auto: pyslurm is not installed"), backend
    explicit = subprocess.run([str(base_venv), "-I", "-m", "hpcdesk", "submit", "--set",
                               "scheduler.backend=pyslurm"], capture_output=True, text=True,
                              timeout=120, cwd=tmp_path, env=env)
    assert explicit.returncode == 2
    assert "scheduler.backend: pyslurm cannot be used here" in explicit.stderr
    assert not (tmp_path / ".hpcdesk/sessions").exists() or not any(
        p for p in (tmp_path / ".hpcdesk/sessions").iterdir() if not p.name.startswith("."))
