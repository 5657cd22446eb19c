"""The Open OnDemand side of the OOD tests: the dashboard's steps (tests/cluster/ood_dashboard.rb,
which mirrors the dashboard's session.rb / session_context.rb and runs the real ood_core) and
the job's submission exactly as OOD's Slurm adapter makes it, as the test user. Used by
test_ood.py and by test_tunnel.py (a tunnel to an OOD-started desktop)."""

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
from conftest import User

from harness import devcluster
from harness.devcluster import REPO, SITE_NAME, VENV, run

DASHBOARD = REPO / "tests/cluster/ood_dashboard.rb"
# The POSTed form with its defaults (the devcluster site's offer).
FORM = {"bc_queue": "gpu", "bc_account": "", "bc_num_hours": "1", "hpcdesk_cores": "2",
        "hpcdesk_memory": "2", "hpcdesk_gpus": "1", "hpcdesk_gpu_type": "",
        "hpcdesk_resolution": "1280x720", "hpcdesk_encoder": "auto", "bc_email_on_started": "0"}


def vendor_dir() -> Path:
    """The vendored OOD sources: $OOD_VENDOR_DIR, else shared/vendor beside the checkout (or
    beside the worktrees' parent)."""
    env = os.environ.get("OOD_VENDOR_DIR")
    candidates = [Path(env)] if env else []
    candidates += [REPO.parent / "shared/vendor", REPO.parent.parent / "shared/vendor"]
    for c in candidates:
        if (c / "ondemand/ood-portal-generator").is_dir() and (c / "ood_core/lib").is_dir():
            return c
    pytest.fail("OOD's vendored sources not found (set OOD_VENDOR_DIR): tried "
                + ", ".join(map(str, candidates)))


def site_file(user: User, name: str, **changes: Any) -> Path:
    """The devcluster site with `changes` ({"ood": {...}, "desktop": {...}}) merged in."""
    site = yaml.safe_load((REPO / "site-configs/devcluster.yaml").read_text())
    for section, values in changes.items():
        site.setdefault(section, {}).update(values)
    path = user.home / f"ood-site-{name}.yaml"
    path.write_text(yaml.safe_dump(site))
    run(["chown", f"{user.name}:", str(path)])
    return path


def generate_app(user: User, out: Path, site: str = SITE_NAME) -> Path:
    proc = user.run("ood", "generate", "--site", site, "--out", str(out), "--force",
                    "--hpcdesk", str(VENV / "bin/hpcdesk"), "--json", check=True)
    assert json.loads(proc.stdout)["out"] == str(out)
    return out


def copy_ood_core(user: User) -> Path:
    """The harness and ood_core where the test user can read them."""
    core = vendor_dir() / "ood_core"
    where = user.home / "ood-core-test"
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(core, where / "ood_core")
    shutil.copy(DASHBOARD, where / "ood_dashboard.rb")
    run(["chown", "-R", f"{user.name}:", str(where)])
    return where


def as_user(user: User, *argv: str, stdin: str | None = None, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(devcluster.as_user(user.name, *argv, env=env), input=stdin, timeout=timeout,
               cwd="/")


def dashboard(user: User, core: Path, action: str, app: Path, work: Path,
              form: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return as_user(user, "ruby", str(core / "ood_dashboard.rb"), action, str(app), str(work),
                   stdin=json.dumps(form or {}), env={"OOD_CORE_DIR": str(core / "ood_core")})


def new_work_dir(user: User) -> Path:
    # Where the dashboard stages a session (its dataroot .../batch_connect/sys/APP/output/ID),
    # here under a directory whose name has a space: the batch script's unquoted `cd` fails
    # there, and the job still runs in it because the adapter passes -D.
    return (user.home / "ondemand data/sys/dashboard/batch_connect/sys/hpcdesk/output"
            / str(uuid.uuid4()))


def submit(user: User, core: Path, app: Path, work: Path,
           form: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """The dashboard's submit: render, stage, build the script, then sbatch exactly as OOD's
    Slurm adapter runs it (its arguments, the script on stdin). (job id, dashboard output)"""
    rendered = dashboard(user, core, "submit", app, work, form or FORM)
    assert rendered.returncode == 0, rendered.stderr
    out = json.loads(rendered.stdout)
    proc = as_user(user, *out["argv"], stdin=Path(out["script"]).read_text())
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0], out


def wait_for_file(path: Path, job: str, timeout: float = 240) -> None:
    """Until `path` exists with content (OOD's create_yml opens it, then writes)."""
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        state = run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()
        log = path.parent / "output.log"
        assert state or path.exists(), \
            f"job {job} ended without {path.name}:\n{log.read_text() if log.exists() else ''}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout}s (job {state})"
        time.sleep(0.5)


def start_session(user: User, app: Path, core: Path) -> tuple[str, Path, dict[str, Any]]:
    """Submit the form with the defaults as the dashboard would: (job, work dir, connection)."""
    work = new_work_dir(user)
    job, _out = submit(user, core, app, work)
    try:
        wait_for_file(work / "connection.yml", job)
    except BaseException:
        run(["scancel", job])
        raise
    return job, work, yaml.safe_load((work / "connection.yml").read_text())
