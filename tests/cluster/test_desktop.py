"""Issue 2 acceptance on the real dev cluster: submit -> URL -> browser -> cancel."""

from __future__ import annotations

import json
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import User, colour_fraction, http_status, node_user_pids, place_window, read_until

from harness import browser
from harness.devcluster import NODE_IPS, SITE, run

pytestmark = pytest.mark.cluster
GREEN = (0x13, 0xA8, 0x6B)


def submit(user: User, *extra: str, timeout: float = 240) -> dict[str, object]:
    data = user.json("submit", *SITE, *extra, timeout=timeout)
    assert isinstance(data, dict)
    return data


def test_submit_browser_cancel(user: User, tmp_path: Path, cleanup_jobs: list[str]) -> None:
    proc = user.run("submit", *SITE, "--json", check=True)
    data = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    cleanup_jobs.append(data["session"])
    assert data["state"] == "ready"
    url, node = str(data["url"]), str(data["node"])
    assert url.startswith(f"https://{NODE_IPS[node]}:")
    assert data["tls"] == "self-signed" and len(str(data["tls_fingerprint"])) == 95
    assert http_status(url, (data["user"], data["password"])) == 200
    assert http_status(url, None) == 401
    assert http_status(url, (data["user"], "wrong")) == 401

    # A window of a known colour, placed on the desktop's display from the node itself.
    place_window(user, str(data["session"]))
    shot = tmp_path / "desktop.png"
    seen = browser.watch(url, shot, lambda png: colour_fraction(png, GREEN) > 0.10,
                         login=(str(data["user"]), str(data["password"])))
    assert seen, f"the placed window is not visible in the browser (last screenshot: {shot})"

    cancel = user.json("cancel", str(data["session"]), *SITE)
    assert cancel["state"] == "cancelled"
    # Everything the job started on the node is gone (checked inside the node's namespace).
    deadline = time.monotonic() + 30
    while node_user_pids(node) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert node_user_pids(node) == []
    status = user.json("status", str(data["session"]), *SITE)
    assert status["state"] == "cancelled"
    sdir = user.sessions_root() / str(data["session"])
    assert {"job.sh", "job.out", "agent.log", "node.json"} <= {p.name for p in sdir.iterdir()}
    assert json.loads((sdir / "node.json").read_text())["phase"] == "stopped"


def test_two_desktops_same_node_same_moment(user: User, cleanup_jobs: list[str]) -> None:
    pin = ("--set", "scheduler.extra_args=['--nodelist=gpu02']")
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: submit(user, *pin), range(2)))
    cleanup_jobs.extend(str(r["session"]) for r in results)
    a, b = results
    assert a["node"] == b["node"] == "gpu02"
    assert (a["display"], a["port"]) != (b["display"], b["port"])
    assert a["port"] != b["port"]
    for r in results:
        assert http_status(str(r["url"]), (str(r["user"]), str(r["password"]))) == 200
    assert a["password"] != b["password"]


@pytest.mark.parametrize(("override", "cause"), [
    ("runtime.session=/nonexistent/window-manager", "/nonexistent/window-manager"),
    ("runtime.xorg=/bin/false", "X server failed to start"),
])
def test_desktop_that_cannot_start(user: User, override: str, cause: str) -> None:
    proc = user.run("submit", *SITE, "--set", override, "--set", "timeouts.start=60",
                    timeout=200)
    assert proc.returncode == 1, proc.stderr
    assert cause in proc.stderr
    assert "Slurm state" in proc.stderr
    assert "timed out" not in proc.stderr  # the cause was seen, not waited out
    sid = _newest_session(user)
    sdir = user.sessions_root() / sid
    assert (sdir / "job.sh").exists() and (sdir / "agent.log").exists()
    # No job is left behind for this session.
    job = json.loads((sdir / "session.json").read_text())["job_id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        left = run(["squeue", "-h", "-j", str(job), "-t", "PD,R,CG"]).stdout.strip()
        if not left:
            break
        time.sleep(0.5)
    assert not left


def _newest_session(user: User) -> str:
    sessions = sorted((p for p in user.sessions_root().iterdir() if not p.name.startswith(".")),
                      key=lambda p: p.stat().st_mtime)
    return sessions[-1].name


@pytest.mark.parametrize(("args", "needle"), [
    (("--set", "desktop.nope=1"), "desktop.nope: unknown key"),
    (("--set", "desktop.width=wide"), "desktop.width: expected an integer"),
    (("--resolution", "0x0"), "desktop.width: 0 is out of range"),
    (("--resolution", "100000x1"), "desktop.width: 100000 is out of range"),
    (("--time", "-5"), "is not a Slurm time"),
    (("--time", "1:xx"), "is not a Slurm time"),
    (("--partition", "nosuchpartition"), "invalid partition"),
    (("--set", "scheduler.job_name=a'b"), "scheduler.job_name"),
    (("--set", "desktop.timezone=UTC\n;id"), "desktop.timezone"),
])
def test_bad_input_is_one_clear_error(user: User, args: tuple[str, ...], needle: str) -> None:
    def job_ids() -> set[str]:
        return set(run(["squeue", "-h", "-u", user.name, "-t", "all", "-o", "%i"]).stdout.split())

    before = job_ids()
    sessions_before = set(p.name for p in user.sessions_root().iterdir())
    proc = user.run("submit", *SITE, *args, timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert needle.lower() in proc.stderr.lower()
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") >= 1 and len(proc.stderr.splitlines()) <= 4
    assert job_ids() <= before, "a job was submitted"
    assert set(p.name for p in user.sessions_root().iterdir()) == sessions_before


@pytest.mark.reliability("S9 isolation from a second user",
                          "no password in files, /proc, node /tmp, Slurm output; 401")
def test_injection_is_literal_and_password_stays_secret(user: User, tmp_path: Path,
                                                        cleanup_jobs: list[str]) -> None:
    marker = user.home / "INJECTED"
    marker.unlink(missing_ok=True)
    root = f"{user.home}/sess'$(touch {marker})`touch {marker}`;touch {marker}"
    data = submit(user, "--set", f"session_root={root}")
    cleanup_jobs.append(str(data["session"]))
    sdir = Path(root) / str(data["session"])
    assert sdir.is_dir(), "the session directory was not created literally"
    assert not marker.exists(), "an injected command ran"
    password = str(data["password"])
    job = str(json.loads((sdir / "session.json").read_text())["job_id"])
    # Not on any command line on this machine (all nodes share the process table).
    ps = run(["ps", "-eww", "-o", "args"]).stdout
    assert password not in ps
    assert password not in (sdir / "job.sh").read_text()
    show = run(["scontrol", "show", "job", "-dd", job]).stdout
    assert job in show and password not in show
    script = run(["scontrol", "write", "batch_script", job, "-"]).stdout
    assert password not in script
    # The job environment: the batch step's own environment on the node.
    agent_pid = json.loads((sdir / "node.json").read_text())["agent_pid"]
    environ = Path(f"/proc/{agent_pid}/environ").read_bytes().decode(errors="replace")
    assert "SLURM_JOB_ID" in environ and password not in environ
    for log in [*sdir.iterdir(), *Path("/var/log/hpcdesk-devcluster").glob("*")]:
        if log.is_file() and log.name != "connection.json":
            assert password not in log.read_text(errors="replace"), log
    cancelled = user.json("cancel", str(data["session"]), *SITE, "--set", f"session_root={root}")
    assert cancelled["state"] == "cancelled"


def test_status_list_logs(user: User, cleanup_jobs: list[str]) -> None:
    proc = user.run("submit", *SITE, "--no-wait", "--json", check=True)
    info = json.loads(proc.stdout)
    sid = str(info["session"])
    cleanup_jobs.append(sid)
    waited = user.json("status", sid, "--wait", *SITE)
    assert waited["state"] == "ready" and waited["url"]
    listing = user.json("list", *SITE)
    assert sid in [row["session"] for row in listing]
    by_job = user.json("status", str(info["job_id"]), *SITE)
    assert by_job["session"] == sid
    logs = user.run("logs", sid, *SITE, check=True).stdout
    assert "agent.log" in logs and "phase ready" in logs
    human = user.run("status", sid, *SITE, check=True).stdout
    assert "URL:" in human and "password:" in human


@pytest.mark.reliability("S7 Ctrl-C during submit (held)",
                          "exit 130, the job keeps running and can be reattached")
def test_ctrl_c_leaves_job_running(user: User, cleanup_jobs: list[str]) -> None:
    """Ctrl-C while submit waits. The job is held in the queue on purpose (sbatch --hold) and
    the interrupt comes only once submit has said so, however fast or slow the machine."""
    proc = user.popen("submit", *SITE, "--set", "scheduler.extra_args=['--hold']")
    try:
        head = read_until(proc, "is queued", timeout=120)
    except BaseException:
        proc.kill()
        raise
    m = re.search(r"session (\w+), job (\d+)", head)
    assert m, head
    sid, job = m[1], m[2]
    cleanup_jobs.append(sid)
    assert "JobHeldUser" in head, head
    subprocess.run(["pkill", "-INT", "-P", str(proc.pid)], check=False)  # the child of runuser
    proc.wait(timeout=60)  # stdout is drained by read_until's thread
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert proc.returncode == 130, (head, err)
    assert f"hpcdesk status {sid} --wait" in err and f"hpcdesk cancel {sid}" in err
    # The job was left alone: still queued, and it becomes the desktop once released.
    assert run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "PENDING"
    assert run(["scontrol", "release", job]).returncode == 0
    st = user.json("status", sid, "--wait", *SITE)
    assert st["state"] == "ready"
