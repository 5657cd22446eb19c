"""Issue 12 fault scenarios on the dev cluster: what dies, what is left, what status says."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import User, controller_stopped, http_status, read_until

from harness.devcluster import SITE, VENV, run

pytestmark = pytest.mark.cluster


def wait_for(what: str, check: Callable[[], bool], timeout: float = 120,
             every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(every)


def tree(root: int) -> set[int]:
    """`root` and its descendants now (all nodes share this machine's process table)."""
    from hpcdesk.node.procs import descendants

    return {root, *descendants(root)}


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z":
                out.add(pid)
        except OSError:
            continue
    return out


def squeue_state(job: str) -> str:
    return run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()


@pytest.mark.reliability("S3 node agent SIGKILLed",
                          "no desktop process outlives the job; status says what happened")
def test_agent_killed_leaves_no_desktop_process(user: User, cleanup_jobs: list[str]) -> None:
    """Scenario 3: the agent is SIGKILLed; nothing of the desktop outlives the job, and
    status says what happened."""
    data = user.json("submit", *SITE)
    sid, job = str(data["session"]), str(data["job_id"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    agent = int(json.loads((sdir / "node.json").read_text())["agent_pid"])
    desktop = tree(agent) - {agent}
    assert len(desktop) >= 3, desktop  # X server, session, web UI, autostart
    os.kill(agent, signal.SIGKILL)
    wait_for("every desktop process to end", lambda: not alive(desktop), timeout=60)
    wait_for("the job to leave the queue", lambda: squeue_state(job) in ("", "COMPLETED",
                                                                         "FAILED"))
    st = user.json("status", sid, *SITE)
    assert st["state"] == "failed", st
    assert "node agent on gpu0" in st["detail"] and "killed or died" in st["detail"], st
    assert "hpcdesk logs" in st["detail"]
    assert (sdir / "agent.log").exists() and (sdir / "job.sh").exists()
    with pytest.raises(OSError):  # nobody serves the old port any more
        socket.create_connection((str(data["host"]), int(data["port"])), timeout=5).close()


def child_named(agent: int, word: str) -> int:
    for pid in sorted(tree(agent) - {agent}):
        try:  # a process may exit between the two reads
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[1])
        except OSError:
            continue
        if word in cmd and ppid == agent:
            return pid
    raise AssertionError(f"no child {word!r} of the agent {agent}")


@pytest.mark.reliability("S4 web UI or X server crashes after ready",
                          "web UI restarted (3x) with the same URL and password; X crash ends the job with the reason")
def test_web_ui_crash_restarts_with_same_url_then_x_crash_ends(user: User,
                                                                cleanup_jobs: list[str]) -> None:
    """Scenario 4: a crashed web UI comes back on the same URL with the same password, a
    bounded number of times; the X server's crash ends the desktop with the reason recorded."""
    data = user.json("submit", *SITE)
    sid, url = str(data["session"]), str(data["url"])
    creds = (str(data["user"]), str(data["password"]))
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    agent = int(json.loads((sdir / "node.json").read_text())["agent_pid"])
    for n in (1, 2, 3):
        os.kill(child_named(agent, "selkies"), signal.SIGKILL)
        wait_for(f"restart {n}", lambda n=n: f"starting it again ({n} of 3)" in (
            sdir / "agent.log").read_text())
        wait_for("the same URL and password to work again", lambda: _status(url, creds) == 200)
        assert user.json("status", sid, *SITE)["state"] == "ready"
    os.kill(child_named(agent, "selkies"), signal.SIGKILL)  # once too often
    wait_for("the final state", lambda: user.json("status", sid, *SITE)["state"] == "failed",
             every=1)
    st = user.json("status", sid, *SITE)
    assert "selkies exited (signal 9)" in st["detail"] and "after 3 restarts" in st["detail"]
    # The X server: not restartable (the session's programs die with it).
    data = user.json("submit", *SITE)
    sid = str(data["session"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    agent = int(json.loads((sdir / "node.json").read_text())["agent_pid"])
    os.kill(child_named(agent, "Xorg"), signal.SIGKILL)
    wait_for("the final state", lambda: user.json("status", sid, *SITE)["state"] == "failed",
             every=1)
    st = user.json("status", sid, *SITE)
    assert "the desktop stopped unexpectedly: Xorg exited (signal 9)" in st["detail"], st
    assert "phase failed" in (sdir / "agent.log").read_text()


def _status(url: str, creds: tuple[str, str]) -> int:
    try:
        return http_status(url, creds)
    except OSError:
        return 0


@pytest.mark.reliability("S7 scancel during startup",
                          "clear error, logs kept, nothing left running")
def test_scancel_during_startup(user: User) -> None:
    """Scenario 7: scancel while the desktop starts. Held there deterministically: the web UI
    command never answers, so the agent is in "waiting for the web UI" until it is cancelled."""
    marker = str(87400 + os.getpid() % 10000)
    proc = user.popen("submit", *SITE, "--set", f"runtime.selkies=sleep {marker}",
                      "--set", "timeouts.start=600")
    try:
        head = read_until(proc, "waiting for the web UI", timeout=180)
        m = re.search(r"session (\w+), job (\d+)", head)
        assert m, head
        sid, job = m[1], m[2]
        sdir = user.sessions_root() / sid
        agent = int(json.loads((sdir / "node.json").read_text())["agent_pid"])
        desktop = tree(agent)
        assert run(["runuser", "-u", user.name, "--", "scancel", job]).returncode == 0
        assert proc.wait(timeout=120) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.stderr is not None
    err = proc.stderr.read()
    assert "stopped by Slurm (scancel or end of the time limit)" in err, err
    assert f"everything is kept in {sdir}" in err and "Traceback" not in err
    wait_for("every desktop process to end", lambda: not alive(desktop), timeout=60)
    wait_for("the job to end", lambda: squeue_state(job) == "")
    st = user.json("status", sid, *SITE)
    assert st["state"] in ("failed", "cancelled") and "scancel" in st["detail"], st
    for name in ("agent.log", "job.sh", "node.json", "request.json"):
        assert (sdir / name).exists(), name
    assert not (sdir / "connection.json").exists()


# An open browser tab as Selkies sees it: its streaming WebSocket, authenticated (basic auth),
# from the page's own origin; it reads whatever the desktop sends.
WS_VIEWER = """
import asyncio, os, ssl, sys
import aiohttp
async def main(url):
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    auth = aiohttp.BasicAuth(os.environ["VIEWER_USER"], os.environ["VIEWER_PASSWORD"])
    origin = url.split("/api/")[0].replace("wss://", "https://")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, ssl=ctx, auth=auth, headers={"Origin": origin}) as ws:
            print("connected", flush=True)
            async for _ in ws:
                pass
asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.reliability("S6 idle timeout",
                          "a viewer keeps it alive; without one the job ends, GPU freed, reason recorded")
def test_idle_timeout_ends_a_desktop_nobody_watches(user: User, cleanup_jobs: list[str]) -> None:
    """Scenario 6: the site's idle timeout (15 s here). A connected viewer keeps the desktop
    alive well past it; once the viewer leaves, the job ends, the GPU is free again, and the
    reason is recorded. The viewer is what an open browser tab is to Selkies: an
    authenticated WebSocket on its streaming route (a bare connection does not count,
    tests/cluster/test_hostile_neighbour.py)."""
    site = user.home / "h12-idle-site.yaml"
    text = (Path(__file__).resolve().parents[2] / "site-configs/devcluster.yaml").read_text()
    site.write_text(text.rstrip() + "\n  idle: 15\n")
    os.chmod(site, 0o644)
    data = user.json("submit", "--site", str(site))
    sid, job = str(data["session"]), str(data["job_id"])
    cleanup_jobs.append(sid)
    viewer = subprocess.Popen(
        [str(VENV / "bin/python"), "-c", WS_VIEWER, f"wss://{data['host']}:{data['port']}"
         "/api/websockets"], env={**os.environ, "VIEWER_USER": str(data["user"]),
                                  "VIEWER_PASSWORD": str(data["password"])},
        stdout=subprocess.PIPE, text=True)
    assert viewer.stdout is not None and viewer.stdout.readline().strip() == "connected"
    watched_until = time.monotonic() + 45  # three idle timeouts
    while time.monotonic() < watched_until:
        assert squeue_state(job) == "RUNNING"
        assert viewer.poll() is None
        time.sleep(3)
    assert user.json("status", sid, "--site", str(site))["state"] == "ready"
    viewer.kill()
    viewer.wait(10)
    left = time.monotonic()
    wait_for("the idle desktop to end", lambda: squeue_state(job) == "", timeout=120)
    assert time.monotonic() - left >= 10  # not at once (the agent samples every second)
    st = user.json("status", sid, "--site", str(site))
    assert st["state"] == "idle", st
    assert "no viewer was connected for 15s" in st["detail"]


@pytest.mark.reliability("S1 slurmctld down for 30 s while submit waits",
                         "submit keeps waiting and succeeds; status and list answer; no "
                         "duplicate job")
def test_controller_outage_while_waiting(user: User, cleanup_jobs: list[str]) -> None:
    """The job is held in the queue (sbatch --hold) so submit is waiting on a pending job
    when slurmctld stops; it is released only after the controller is back."""
    submit = user.popen("submit", *SITE, "--json", "--set", "scheduler.extra_args=['--hold']")
    waiter = None
    try:
        err_head = read_until(submit, "is queued", timeout=120, stderr=True)
        m = re.search(r"session (\w+), job (\d+)", err_head)
        assert m, err_head
        sid, job = m[1], m[2]
        cleanup_jobs.append(sid)
        with controller_stopped():
            outage = time.monotonic()
            # The user's processes share a queue snapshot for a second (queue_table.py):
            # ask only once the last one taken before the outage is stale.
            snapshot = user.sessions_root() / ".cache" / "queue-default.txt"
            wait_for("the last queue snapshot to go stale", lambda: not snapshot.exists()
                     or time.time() - snapshot.stat().st_mtime > 2, timeout=30)
            listed = user.run("list", *SITE, "--json", timeout=120)
            assert listed.returncode == 0, listed.stderr
            assert [r["state"] for r in json.loads(listed.stdout) if r["session"] == sid] == [
                "unknown"]
            st = user.json("status", sid, *SITE)
            assert st["state"] == "unknown" and "Traceback" not in json.dumps(st)
            waiter = user.popen("status", sid, *SITE, "--wait", "--json")
            wait_for("30 s of outage", lambda: time.monotonic() - outage >= 30, timeout=60)
            assert submit.poll() is None and waiter.poll() is None  # both still waiting
        assert run(["scontrol", "release", job]).returncode == 0
        out, _ = submit.communicate(timeout=300)  # (stderr is read by read_until's thread)
        assert submit.returncode == 0, out
        assert json.loads(out)["state"] == "ready"
        w_out, w_err = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, w_err
        assert json.loads(w_out)["state"] == "ready"
        tagged = [ln for ln in run(["squeue", "-h", "-u", user.name, "-o", "%i %k"]
                                    ).stdout.splitlines() if ln.endswith(f"hpcdesk:{sid}")]
        assert tagged == [f"{job} hpcdesk:{sid}"]  # one job, not a second one
    finally:
        for proc in (submit, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()



@pytest.mark.reliability("S2 slurmd killed while the desktop runs",
                         "status reports the node failure; logs and state are kept")
def test_slurmd_killed_while_the_desktop_runs(user: User, cleanup_jobs: list[str]) -> None:
    """gpu01's slurmd is SIGKILLed under a running desktop; Slurm declares the node dead
    after SlurmdTimeout (60 s on the dev cluster) and ends the job (desktops are never
    requeued). slurmd is started again afterwards, whatever happens."""
    data = user.json("submit", *SITE, "--set", "scheduler.extra_args=['--nodelist=gpu01']")
    sid, job = str(data["session"]), str(data["job_id"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid
    agent = int(json.loads((sdir / "node.json").read_text())["agent_pid"])
    desktop = tree(agent)
    pid = int(Path("/run/slurmd-gpu01.pid").read_text())
    try:
        os.kill(pid, signal.SIGKILL)
        wait_for("Slurm to end the job on the dead node",
                 lambda: user.json("status", sid, *SITE)["state"] != "ready", timeout=400,
                 every=5)
        st = user.json("status", sid, *SITE)
    finally:
        up = run(["bash", "tests/cluster/devcluster.sh", "up"], timeout=300,
                  cwd=Path(__file__).resolve().parents[2])
        assert up.returncode == 0, up.stderr
    assert st["state"] == "node_fail", st
    assert "node gpu01 failed while the desktop was ready" in st["detail"], st
    assert "hpcdesk logs" in st["detail"]
    for name in ("agent.log", "job.sh", "node.json", "request.json"):
        assert (sdir / name).exists(), name
    # The returning slurmd ends what is left of the dead job on its node.
    wait_for("the desktop's processes to end", lambda: not alive(desktop), timeout=180)
    assert squeue_state(job) == ""
