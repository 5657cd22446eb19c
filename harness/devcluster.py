"""The dev cluster (tests/cluster/devcluster.sh) as the tests and benchmarks drive it, as root:
where things are, its users and its site, and how a command runs as a user or on a node."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEVCLUSTER = REPO / "tests/cluster/devcluster.sh"
# The shared virtual environment (scripts/setup.sh); the nodes run hpcdesk from it too.
VENV = Path(os.environ.get("HPCDESK_VENV", "/opt/hpcdesk/venv"))
USER = os.environ.get("HPCDESK_DEV_USER", "hpcuser")
# A second unprivileged user for two-user tests (devcluster.sh up creates it when named).
USER2 = os.environ.get("HPCDESK_DEV_USER2", f"{USER}b")
SITE_NAME = "devcluster"  # site-configs/devcluster.yaml
SITE = ("--site", SITE_NAME)
NODE_IPS = {"gpu01": "10.77.0.11", "gpu02": "10.77.0.12"}
CONTROLLER_IP = "10.77.0.1"  # the login side's address on the cluster network
# A login shell's PATH on the dev cluster: the venv's hpcdesk first.
LOGIN_PATH = f"{VENV / 'bin'}:/usr/local/bin:/usr/bin:/bin"


def home(name: str) -> Path:
    return Path(f"/home/{name}")


def login_env(name: str, path: str = LOGIN_PATH) -> dict[str, str]:
    """The environment a login of user `name` has (what hpcdesk reads of it)."""
    return {"HOME": str(home(name)), "USER": name, "LOGNAME": name, "PATH": path}


def as_user(name: str, *argv: str, path: str = LOGIN_PATH,
            env: Mapping[str, str] | None = None) -> list[str]:
    """`argv` run by root as user `name` (runuser) with a login's environment and `env`."""
    pairs = {**login_env(name, path), **(env or {})}
    return ["runuser", "-u", name, "--", "env", *(f"{k}={v}" for k, v in pairs.items()), *argv]


def on_display(name: str, state: Mapping[str, Any], *argv: str) -> list[str]:
    """`argv` as user `name` on a session's X display (node.json's display and xauthority);
    for node_exec, on the session's node."""
    return ["runuser", "-u", name, "--", "env", f"DISPLAY={state['display']}",
            f"XAUTHORITY={state['xauthority']}", *argv]


def run(argv: list[str], timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def node_exec(node: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`argv` as root on a node (inside its network namespace)."""
    return run(["bash", str(DEVCLUSTER), "exec", node, *argv], timeout=timeout)
