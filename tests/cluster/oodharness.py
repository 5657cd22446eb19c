"""The Open OnDemand side of the OOD tests: the dashboard's steps (tests/cluster/ood_dashboard.rb
with the real ood_core) and the job's submission, as the test user. Used by test_ood.py and by
test_tunnel.py (a tunnel to an OOD-started desktop)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, VENV, User, _run

OOD_CORE = Path(os.environ.get("OOD_CORE_DIR") or REPO.parent / "shared/vendor/ood_core")
DASHBOARD = REPO / "tests/cluster/ood_dashboard.rb"
FORM = {"hpcdesk_partition": "gpu", "hpcdesk_account": "", "hpcdesk_hours": "1",
        "hpcdesk_gpus": "1", "hpcdesk_gpu_type": "", "hpcdesk_resolution": "1280x720",
        "hpcdesk_interface": "selkies", "hpcdesk_encoder": "auto"}


def generate_app(user: User, out: Path, site: str = "devcluster") -> Path:
    proc = user.run("ood", "generate", "--site", site, "--out", str(out), "--force",
                    "--hpcdesk", str(VENV / "bin/hpcdesk"), "--json", check=True)
    assert json.loads(proc.stdout)["out"] == str(out)
    return out


def copy_ood_core(user: User) -> Path:
    """The harness and ood_core where the test user can read them."""
    if not (OOD_CORE / "lib/ood_core").is_dir():
        pytest.fail(f"ood_core sources not found at {OOD_CORE} (set OOD_CORE_DIR)")
    where = user.home / "ood-core-test"
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(OOD_CORE, where / "ood_core")
    shutil.copy(DASHBOARD, where / "ood_dashboard.rb")
    _run(["chown", "-R", f"{user.name}:", str(where)])
    return where


def as_user(user: User, *argv: str, stdin: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    return _run(["runuser", "-u", user.name, "--", "env", f"HOME={user.home}",
                 f"USER={user.name}", f"LOGNAME={user.name}",
                 f"PATH={VENV / 'bin'}:/usr/bin:/bin", *extra, *argv],
                input=stdin, timeout=timeout, cwd="/")


def dashboard(user: User, core: Path, action: str, app: Path, work: Path,
              form: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return as_user(user, "ruby", str(core / "ood_dashboard.rb"), action, str(app), str(work),
                   stdin=json.dumps(form or {}), env={"OOD_CORE_DIR": str(core / "ood_core")})


def new_work_dir(user: User) -> Path:
    # Where the dashboard stages a session: ~/ondemand/data/sys/dashboard/batch_connect/...
    return (user.home / "ondemand/data/sys/dashboard/batch_connect/sys/hpcdesk/output"
            / str(uuid.uuid4()))


def sbatch(user: User, script: Path, native: list[str], work: Path) -> str:
    # ood_core's Slurm adapter puts the shell line in front of the template's content and
    # passes the app's native arguments to sbatch; the script goes in on stdin.
    content = "#!/bin/bash\n" + script.read_text()
    proc = as_user(user, "sbatch", "--parsable", f"--output={work}/output.log",
                   "--job-name=sys/dashboard/sys/hpcdesk", *native, stdin=content)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def wait_for_file(path: Path, job: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        state = _run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()
        log = path.parent / "output.log"
        assert state or path.exists(), \
            f"job {job} ended without {path.name}:\n{log.read_text() if log.exists() else ''}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout}s (job {state})"
        time.sleep(0.5)




def start_session(user: User, app: Path, core: Path) -> tuple[str, Path, dict[str, Any]]:
    """Submit the form with the defaults as the dashboard would: (job, work dir, connection)."""
    work = new_work_dir(user)
    rendered = dashboard(user, core, "submit", app, work, FORM)
    assert rendered.returncode == 0, rendered.stderr
    submit = json.loads(rendered.stdout)
    job = sbatch(user, Path(submit["script"]), submit["native"], work)
    try:
        wait_for_file(work / "connection.yml", job)
    except BaseException:
        _run(["scancel", job])
        raise
    return job, work, yaml.safe_load((work / "connection.yml").read_text())
