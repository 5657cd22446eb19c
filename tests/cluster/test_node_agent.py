"""Issue 3 acceptance on the dev cluster: exact screen sizes, and 8 desktops at once on a node."""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import User, http_status

from harness.devcluster import SITE, as_user, node_exec, on_display

pytestmark = pytest.mark.cluster


@pytest.mark.parametrize("size", ["1280x720", "1920x1080", "2560x1440"])
def test_xorg_reports_requested_size(user: User, size: str, cleanup_jobs: list[str]) -> None:
    data = user.json("submit", *SITE, "--resolution", size)
    cleanup_jobs.append(str(data["session"]))
    sdir = user.sessions_root() / str(data["session"])
    node = json.loads((sdir / "node.json").read_text())
    info = node_exec(str(data["node"]), *on_display(user.name, node, "xdpyinfo"))
    assert info.returncode == 0, info.stderr
    m = re.search(r"dimensions:\s+(\d+x\d+) pixels", info.stdout)
    assert m and m.group(1) == size
    # The encoder decision and its reason are recorded for the user.
    assert data["encoder"] == "x264enc"
    assert "no NVIDIA" in str(data["encoder_reason"])
    assert "no NVIDIA driver" in (sdir / "agent.log").read_text()


def test_eight_desktops_at_once_on_one_node(user: User, cleanup_jobs: list[str]) -> None:
    args = (*SITE, "--cpus", "1", "--mem", "400M", "--set", "timeouts.start=400",
            "--set", "scheduler.extra_args=['--nodelist=gpu01']", "-G", "0")

    def one(_: int) -> dict[str, object]:
        proc = user.run("submit", *args, "--json", timeout=600)
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        cleanup_jobs.append(str(out["session"]))
        return out

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    assert {r["node"] for r in results} == {"gpu01"}
    assert len({r["display"] for r in results}) == 8
    assert len({r["port"] for r in results}) == 8
    for r in results:
        assert http_status(str(r["url"]), (str(r["user"]), str(r["password"]))) == 200
    for r in results:
        user.run("cancel", str(r["session"]), *SITE, "--no-wait")


def test_doctor_on_the_login_side_and_on_a_node(user: User) -> None:
    login = user.json("doctor", *SITE)
    by_name = {c["name"]: c for c in login["checks"]}
    assert by_name["slurm controller"]["status"] == "ok"
    assert by_name["partition"]["status"] == "ok"
    assert by_name["configuration"]["status"] == "ok"
    # On a GPU node of the dev cluster, inside an allocation (fake GPUs, no NVIDIA driver).
    proc = _srun_doctor(user)
    assert proc.returncode == 0, proc.stderr
    node = json.loads(proc.stdout)
    checks = {c["name"]: c for c in node["checks"]}
    assert node["worst"] == "warn"
    assert "no NVIDIA driver" in checks["nvidia-driver"]["detail"] and checks["nvidia-driver"]["fix"]
    assert checks["xorg"]["status"] == "ok"
    assert "x264enc" in checks["encoder"]["detail"]


def _srun_doctor(user: User) -> subprocess.CompletedProcess[str]:
    argv = as_user(user.name, "srun", "-p", "gpu", "--gres=gpu:1", "-c", "1", "--mem=200M",
                   "--chdir=/", str(user.hpcdesk), "doctor", "--node", "--json",
                   path="/usr/bin:/bin")
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd="/")
