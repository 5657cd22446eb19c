"""Issue 12 on the dev cluster: a node shared by several users, and programs that exit or
double-fork inside a desktop."""

from __future__ import annotations

import json
import os
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import User, node_user_pids

from harness.devcluster import SITE, VENV, node_exec

pytestmark = pytest.mark.cluster

# Runs as each user on the node: claims 4 ports and 2 displays the way the agent does, writes
# them down, and holds them until the other user has written theirs (both hold at once).
CLAIM = textwrap.dedent("""
    import json, os, sys, time
    from hpcdesk.node.displays import DisplayLease
    from hpcdesk.node.ports import PortLease
    me, other = sys.argv[1], sys.argv[2]
    ports = PortLease("127.0.0.1", 21000, 21015)
    displays = [DisplayLease(), DisplayLease()]  # held (referenced) until the end
    got = {"ports": [ports.acquire() for _ in range(4)],
           "displays": [d.acquire() for d in displays]}
    with open(f"/var/tmp/h12-{me}.json.tmp", "w") as f:
        json.dump(got, f)
    os.rename(f"/var/tmp/h12-{me}.json.tmp", f"/var/tmp/h12-{me}.json")
    deadline = time.monotonic() + 60
    while not os.path.exists(f"/var/tmp/h12-{other}.json") and time.monotonic() < deadline:
        time.sleep(0.05)
""")

# In a private mount namespace on the node (so nobody else's agents see these files): the
# second user owns the old lock directory with mode 755 and lock files with mode 000, exactly
# what blocked every other user before; then both users claim at the same moment.
HOSTILE = textwrap.dedent("""
    set -eu
    mount -t tmpfs -o mode=1777 h12-vartmp /var/tmp
    mount -t tmpfs -o mode=1777 h12-tmp /tmp
    runuser -u "$B" -- mkdir -m 755 /var/tmp/hpcdesk-locks
    for n in $(seq 21000 21015); do
        runuser -u "$B" -- sh -c "umask 777; : > /var/tmp/hpcdesk-locks/port-$n.lock"
    done
    for n in $(seq 20 40); do
        runuser -u "$B" -- sh -c "umask 777; : > /var/tmp/hpcdesk-locks/display-$n.lock"
    done
    runuser -u "$A" -- "$PY" -c "$CLAIM" "$A" "$B" & a=$!
    runuser -u "$B" -- "$PY" -c "$CLAIM" "$B" "$A" & b=$!
    wait $a; wait $b
    cat /var/tmp/h12-"$A".json; echo; cat /var/tmp/h12-"$B".json
""")


@pytest.mark.reliability("D1 node-wide claims on a shared node",
                          "ports and displays claimed without any file another user owns or can block")
def test_claims_ignore_hostile_lock_files_of_another_user(user: User, second_user: User,
                                                         protected_regular: None) -> None:
    env = ["env", f"A={user.name}", f"B={second_user.name}", f"PY={VENV / 'bin/python'}",
           f"CLAIM={CLAIM}"]
    proc = node_exec("gpu01", *env, "unshare", "--mount", "--propagation", "private",
                     "bash", "-c", HOSTILE, timeout=120)
    assert proc.returncode == 0, proc.stderr
    a, b = (json.loads(line) for line in proc.stdout.splitlines() if line.strip())
    # Nobody blocked. Ports are announced nowhere (issue 19): each lease hands out distinct
    # ports, and a clash between two desktops is settled by the readiness proof, which makes
    # the one that lost try another port (test_hostile_neighbour.py).
    assert len(set(a["ports"])) == 4 and len(set(b["ports"])) == 4, (a, b)
    assert len(set(a["displays"] + b["displays"])) == 4, (a, b)  # claims: no collision


@pytest.mark.reliability("D2 an autostart program exits",
                          "logged; the desktop stays up")
def test_autostart_that_exits_or_double_forks(user: User, cleanup_jobs: list[str]) -> None:
    """`sh -c true` exits at once and a daemon double-forks away: the desktop stays up, both
    are logged, and after cancel the daemon is gone with the job."""
    marker = str(86400 + os.getpid() % 10000)
    autostart = json.dumps(["xterm", "sh -c true", f"setsid -f sleep {marker}"])
    data = user.json("submit", *SITE, "--set", f"runtime.autostart={autostart}", timeout=300)
    sid, node = str(data["session"]), str(data["node"])
    cleanup_jobs.append(sid)
    sdir = user.sessions_root() / sid

    def daemons() -> list[str]:
        return [p for p in node_user_pids(node, user.name) if p.endswith(f"sleep {marker}")]

    deadline = time.monotonic() + 60
    while not daemons() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert daemons(), "the double-forked daemon never ran"
    # The launcher's exit was noticed, logged, and is not fatal.
    deadline = time.monotonic() + 30
    while "not essential" not in (sdir / "agent.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "autostart[1] sh -c true exited (exit code 0)" in (sdir / "agent.log").read_text()
    assert user.json("status", sid, *SITE)["state"] == "ready"
    assert user.json("cancel", sid, *SITE)["state"] == "cancelled"
    assert daemons() == [], "a double-forked daemon outlived the desktop"
    assert "leftover descendant" in (sdir / "agent.log").read_text()


@pytest.mark.reliability("S8 two users race for the last GPUs of a node",
                          "one runs, one queues; no display or port collides (fs.protected_regular=1)")
def test_two_users_race_for_the_last_gpus_of_a_node(user: User, second_user: User,
                                                   protected_regular: None,
                                                   cleanup_jobs: list[str]) -> None:
    """Scenario 8, with fs.protected_regular=1: two users ask at the same moment for the
    GPUs of gpu01 (all of them, so exactly one can have them); one runs, the other queues.
    CPU-only desktops of both users run beside the winner: no display or port collides."""
    gpu = (*SITE, "-G", "2", "--cpus", "1", "--mem", "400M",
           "--set", "scheduler.extra_args=['--nodelist=gpu01']")
    cpu = (*SITE, "-G", "0", "--cpus", "1", "--mem", "400M",
           "--set", "scheduler.extra_args=['--nodelist=gpu01']")
    runs = [(user, gpu), (second_user, gpu), (user, cpu), (second_user, cpu)]
    subs: list[dict[str, object]] = [{}, {}, {}, {}]
    second_sessions: list[str] = []

    def submit(i: int) -> dict[str, object]:
        who, args = runs[i]
        sub = who.json("submit", *args, "--no-wait")
        (cleanup_jobs if who is user else second_sessions).append(str(sub["session"]))
        return dict(sub)

    try:
        # First the CPU-only desktops of both users (so no scheduling order depends on the
        # race's loser), then both users ask for the GPUs at the same moment.
        with ThreadPoolExecutor(2) as pool:
            subs[2], subs[3] = pool.map(submit, (2, 3))
            cpu_ready = list(pool.map(lambda i: runs[i][0].json(
                "status", str(subs[i]["session"]), *SITE, "--wait", timeout=300), (2, 3)))
        with ThreadPoolExecutor(2) as pool:
            subs[0], subs[1] = pool.map(submit, (0, 1))
        states: list[dict[str, object]] = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = [runs[i][0].json("status", str(subs[i]["session"]), *SITE) for i in (0, 1)]
            if sorted(str(s["state"]) for s in states) == ["queued", "ready"]:
                break
            time.sleep(1)
        assert sorted(str(s["state"]) for s in states) == ["queued", "ready"], states
        winner = 0 if states[0]["state"] == "ready" else 1
        loser = 1 - winner
        assert "Resources" in str(states[loser]["detail"]) or "Priority" in str(
            states[loser]["detail"]), states[loser]
        assert all(r["state"] == "ready" for r in cpu_ready), cpu_ready
        running = [json.loads((runs[i][0].sessions_root() / str(subs[i]["session"])
                               / "node.json").read_text()) for i in (winner, 2, 3)]
        assert {str(r["node"]) for r in running} == {"gpu01"}
        assert len({r["port"] for r in running}) == 3, running
        assert len({r["display"] for r in running}) == 3, running
        # The winner leaves: the other user's desktop gets the GPUs.
        runs[winner][0].json("cancel", str(subs[winner]["session"]), *SITE)
        after = runs[loser][0].json("status", str(subs[loser]["session"]), *SITE, "--wait",
                                    timeout=300)
        assert after["state"] == "ready" and after["node"] == "gpu01"
    finally:
        for sid in second_sessions:
            second_user.run("cancel", sid, *SITE, timeout=90)
