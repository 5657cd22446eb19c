#!/usr/bin/env python3
"""Cost at scale on the dev cluster (not a test: prints numbers, asserts nothing).

Run as root with the dev cluster up (docs/performance.md, "Scale"):
    make bench-scale                  # the full run; SHORT=1 keeps it short
    $HPCDESK_VENV/bin/python -m benchmarks.scale [--short] [--only queue sessions waiting desktops]

What it measures (the user is $HPCDESK_DEV_USER; "other users" is $HPCDESK_DEV_USER2):
  queue     `hpcdesk list` and `hpcdesk status ID` with 0, 1,000 and 10,000 other users' held
            jobs in the queue (capped below the controller's MaxJobCount), next to raw
            `squeue -u USER` in the same run: wall time and the user's RPCs (sdiag's per-user
            count), for both scheduler backends; and the raw calls in one process: pyslurm's
            Jobs.load (every job: what the pyslurm backend asked before) and
            slurm_load_job_user (what it asks now), and `squeue` for all jobs.
  sessions  `hpcdesk list --all` and `hpcdesk list` with 10, 100 and 500 sessions of one user,
            all but three of them ended (made with the product's own session functions).
  waiting   1, 10 and 30 `hpcdesk submit`s waiting at once on held jobs: the user's RPCs per
            minute in all (each `squeue -u` is 3: FED_INFO, PARTITION_INFO and the one
            job-info RPC, JOB_USER_INFO), and the login-side CPU and memory (PSS) of the
            waiting processes, with the Slurm commands they ran.
  desktops  one CPU-only desktop on a node: CPU s/s and memory (PSS) of X, Selkies, the
            desktop session and the node agent, idle with no viewer, with one viewer
            (headless Chromium), and after the viewer left; then more idle desktops on the
            same node, one at a time, until a new one's submit -> URL doubles (at most
            --max-desktops).

Every job it makes is cancelled at the end, even on Ctrl-C (`scancel -u` both users).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.run import HOME, hpcdesk, user_rpcs
from benchmarks.stream import TICK, session_pids, socket_bytes
from harness import browser
from harness.devcluster import DEVCLUSTER, SITE, USER, USER2, VENV, login_env, run

SESSIONS = HOME / ".hpcdesk/sessions"
HELD = ["--set", "scheduler.extra_args=['--hold']"]
BACKENDS = ("slurm-cli", "pyslurm")
# scancel of ~8,500 held jobs took 2 to more than 10 minutes on a busy dev cluster
CANCEL_TIMEOUT = 3600
LIVE = 3  # live (held) sessions of the user in the queue and sessions figures

# Submits `n` held jobs as the calling user in one process (pyslurm: one RPC each, no
# process per job), falling back to sbatch.
SUBMITTER = """
import subprocess, sys
n = int(sys.argv[1])
try:
    import pyslurm
    for _ in range(n):
        pyslurm.JobSubmitDescription(
            name="scale-foreign", partitions=["gpu"], script="#!/bin/sh\\ntrue\\n", priority=0,
            standard_output="/dev/null", working_directory="/tmp", time_limit=1,
            environment={"PATH": "/usr/bin:/bin"}).submit()
except ImportError:
    for _ in range(n):
        subprocess.run(["sbatch", "--hold", "-p", "gpu", "-J", "scale-foreign", "-t", "1",
                        "-o", "/dev/null", "--wrap", "true"], check=True, capture_output=True)
"""

# The raw queue calls, timed in one process as the user (ms, median of argv[1] runs).
RAW_CALLS = """
import json, os, statistics, sys, time
import pyslurm
runs = int(sys.argv[1])
out = {}
def timed(name, call):
    times, got = [], None
    for _ in range(runs):
        t0 = time.perf_counter(); got = call(); times.append((time.perf_counter() - t0) * 1000)
    out[name] = [statistics.median(times), len(got)]
timed("pyslurm Jobs.load (every job; the pyslurm backend before)",
      lambda: pyslurm.Jobs.load())
timed("pyslurm slurm_load_job_user (the user's jobs; the pyslurm backend now)",
      lambda: pyslurm.job().find_user(os.getuid()))
print(json.dumps(out))
"""

# Makes `ended` ended sessions under a session root, as the product writes them.
MAKE_ENDED = """
import sys, time
from pathlib import Path
from hpcdesk.session import create, write_json
root, ended = Path(sys.argv[1]), int(sys.argv[2])
for n in range(ended):
    s = create(root)
    at = time.time() - 86400 + n
    write_json(s.path("node.json"), {"phase": "stopped", "node": "gpu01", "reason":
                                     "the job's time limit was reached", "outcome": "timeout"})
    s.update_meta(id=s.id, created=at - 3600, job_id=str(900000 + n), cluster=None,
                  site="devcluster", submitted=at - 3600,
                  final={"state": "timeout", "detail": "the job's time limit was reached",
                         "exit_code": "0:0", "at": at})
"""


# -- helpers ---------------------------------------------------------------------------------
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], unit: str = "ms", digits: int = 0) -> str:
    if not values:
        return "n/a"
    v = sorted(values)
    return (f"{med(v):.{digits}f} {unit} ({v[0]:.{digits}f}..{v[-1]:.{digits}f}, n={len(v)})"
            if len(v) > 1 else f"{v[0]:.{digits}f} {unit}")


def as_uid(name: str, argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`argv` as user `name`, started straight under its uid: no runuser (its PAM session
    costs ~100 ms, more than what is measured, and varies with the machine's load)."""
    uid, gid = user_ids(name)
    return subprocess.run(argv, user=uid, group=gid, extra_groups=[], env=login_env(name),
                          cwd="/", capture_output=True, text=True, timeout=timeout, check=False)


def timed_as_user(argv: list[str], runs: int, before_each: Callable[[], None] = lambda: None
                  ) -> tuple[list[float], list[float], list[float]]:
    """Wall time (ms), CPU time (ms: the command and the Slurm commands it ran) and the
    user's RPCs (sdiag's per-user count) of each of `runs` runs. CPU time is the figure to
    read on a loaded machine: the wall time carries every other process's load."""
    walls, cpus, rpcs = [], [], []
    for _ in range(runs):
        before_each()
        r0 = user_rpcs()
        u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = as_uid(USER, argv)
        walls.append((time.perf_counter() - t0) * 1000)
        u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((u1.ru_utime + u1.ru_stime - u0.ru_utime - u0.ru_stime) * 1000)
        rpcs.append(float(user_rpcs() - r0))
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr[-500:]}")
    return walls, cpus, rpcs


def drop_snapshot(root: Path = SESSIONS) -> Callable[[], None]:
    """Before each timed run: no shared queue snapshot, so the command must ask Slurm."""
    def drop() -> None:
        for f in (root / ".cache").glob("queue-*.txt"):
            f.unlink(missing_ok=True)
    return drop


def cancel_all() -> None:
    for user in (USER2, USER):
        run(["scancel", "-u", user], timeout=CANCEL_TIMEOUT)


def ensure_user2() -> None:
    if run(["id", USER2]).returncode != 0:
        env = {**os.environ, "HPCDESK_DEV_USER": USER2}
        subprocess.run(["bash", str(DEVCLUSTER), "up"], env=env, check=True, timeout=600,
                       capture_output=True)


def user_ids(name: str) -> tuple[int, int]:
    pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


def jobs_of(user: str | None) -> int:
    """Job records the controller holds (finished ones too, until MinJobAge)."""
    argv = ["squeue", "-h", "-t", "all", "-o", "%i"] + (["-u", user] if user else [])
    return len(run(argv, timeout=300).stdout.split())


def queued_of(user: str | None) -> int:
    """Jobs pending or running."""
    argv = ["squeue", "-h", "-o", "%i"] + (["-u", user] if user else [])
    return len(run(argv, timeout=300).stdout.split())


def max_job_count() -> int:
    out = run(["scontrol", "show", "config"]).stdout
    m = re.search(r"^MaxJobCount\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 10000


def submit_held(n: int, root: Path | None = None, backend: str | None = None) -> list[str]:
    """`n` held sessions of the user (`hpcdesk submit --no-wait`): their session ids."""
    extra = ["--set", f"session_root={root}"] if root else []
    extra += ["--set", f"scheduler.backend={backend}"] if backend else []
    sids = []
    for _ in range(n):
        proc = hpcdesk("submit", *SITE, "--no-wait", "--json", *HELD, *extra)
        if proc.returncode != 0:
            raise RuntimeError(f"submit failed: {proc.stderr[-500:]}")
        sids.append(str(json.loads(proc.stdout)["session"]))
    return sids


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    m = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def cpu_of(pid: int, children: bool = False) -> int:
    """utime+stime ticks of `pid` (and of its reaped children: the Slurm commands it ran)."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)


# -- queue: other users' jobs ----------------------------------------------------------------
def bench_queue(levels: list[int], runs: int, backends: list[str]) -> list[tuple[str, ...]]:
    ensure_user2()
    limit = max_job_count()
    rows: list[tuple[str, ...]] = []
    sids = submit_held(LIVE)
    status_sid = sids[0]
    hd = str(VENV / "bin/hpcdesk")
    for level in levels:
        have = queued_of(USER2)
        # Stay well inside MaxJobCount: the other engineers' jobs keep their room.
        room = limit - jobs_of(None) - max(1000, limit * 15 // 100)
        want = min(level, have + max(0, room))
        if want > have:
            t0 = time.perf_counter()
            proc = as_uid(USER2, [str(VENV / "bin/python"), "-c", SUBMITTER, str(want - have)],
                          timeout=3600)
            if proc.returncode != 0:
                print(f"  submitting {want - have} jobs as {USER2} failed: "
                      f"{proc.stderr[-300:]}", flush=True)
            print(f"  {want - have} held jobs of {USER2} queued in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        foreign = queued_of(None) - queued_of(USER)
        label = f"{foreign}" + (f" (asked {level}; capped by MaxJobCount {limit})"
                                if want < level else "")
        print(f"queue: {label} other users' jobs", flush=True)
        first = len(rows)
        w, c, r = timed_as_user(["squeue", "-u", USER], runs)
        ref_w, ref_c = med(w), med(c)
        rows.append((label, "`squeue -u USER`", spread(w), spread(c), "", spread(r, "", 0)))
        for backend in backends:
            opt = ["--set", f"scheduler.backend={backend}"]
            for what, argv in (("list", [hd, "list", *SITE, *opt]),
                               ("status ID", [hd, "status", status_sid, *SITE, *opt])):
                w, c, r = timed_as_user(argv, runs, drop_snapshot())
                rows.append((label, f"`hpcdesk {what}` ({backend})", spread(w), spread(c),
                             f"{med(w) - ref_w:+.0f} / {med(c) - ref_c:+.0f} ms",
                             spread(r, "", 0)))
        if "pyslurm" in backends:
            proc = as_uid(USER, [str(VENV / "bin/python"), "-c", RAW_CALLS, str(runs)])
            if proc.returncode == 0:
                for name, (ms, records) in json.loads(proc.stdout).items():
                    rows.append((label, f"raw, in one process: {name}", f"{ms:.1f} ms", "",
                                 f"{records} records", ""))
        w, c, _ = timed_as_user(["squeue", "-h"], max(3, runs // 2))
        rows.append((label, "raw: `squeue` (every job)", spread(w), spread(c), "", ""))
        for row in rows[first:]:
            print("  " + " | ".join(row), flush=True)
    run(["scancel", "-u", USER2], timeout=CANCEL_TIMEOUT)
    run(["scancel", "-u", USER])
    return rows


def pyslurm_usable() -> bool:
    proc = as_uid(USER, [str(VENV / "bin/python"), "-c", "from hpcdesk.scheduler.slurm_pyslurm "
                         "import probe; print(probe().usable)"])
    return proc.stdout.strip() == "True"


# -- sessions: many of one user ----------------------------------------------------------------
def bench_sessions(counts: list[int], runs: int) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for n in counts:
        root = HOME / f".hpcdesk/scale-sessions-{n}"
        shutil.rmtree(root, ignore_errors=True)
        try:
            live = submit_held(min(LIVE, n), root)
            as_uid(USER, [str(VENV / "bin/python"), "-c", MAKE_ENDED, str(root),
                          str(n - len(live))])
            opt = ["--set", f"session_root={root}"]
            ended = next(d.name for d in sorted(root.iterdir())
                         if not d.name.startswith(".") and d.name not in live)
            for what, argv in (("list --all", ["list", "--all"]), ("list", ["list"]),
                               ("status ENDED-ID", ["status", ended])):
                w, c, r = timed_as_user([str(VENV / "bin/hpcdesk"), *argv, *SITE, *opt], runs,
                                        drop_snapshot(root))
                rows.append((f"{n} ({n - len(live)} ended)", f"`hpcdesk {what}`", spread(w),
                             spread(c), spread(r, "", 0)))
                print("  " + " | ".join(rows[-1]), flush=True)
        finally:
            run(["scancel", "-u", USER])
            shutil.rmtree(root, ignore_errors=True)
    return rows


# -- waiting submits ----------------------------------------------------------------------------
def bench_waiting(counts: list[int], seconds: float, warmup: float,
                  backends: list[str]) -> list[tuple[str, ...]]:
    uid, gid = user_ids(USER)
    rows: list[tuple[str, ...]] = []
    for backend, n in ((b, n) for b in backends for n in counts):
        argv = [str(VENV / "bin/hpcdesk"), "submit", *SITE, *HELD, "--set", "scheduler.gpus=0",
                "--set", f"scheduler.backend={backend}"]
        procs = [subprocess.Popen(argv, user=uid, group=gid, extra_groups=[],
                                  env=login_env(USER), cwd="/", stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
                 for _ in range(n)]
        try:
            deadline = time.monotonic() + 120 + n
            while queued_of(USER) < n and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(warmup)  # past the poll ladder's fast start: the steady state
            r0, c0, t0 = user_rpcs(), [cpu_of(p.pid, True) for p in procs], time.monotonic()
            time.sleep(seconds)
            r1, c1, dt = user_rpcs(), [cpu_of(p.pid, True) for p in procs], time.monotonic() - t0
            rss = [pss_kib(p.pid) for p in procs]
            waiting = sum(p.poll() is None for p in procs)
        finally:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            run(["scancel", "-u", USER])
        cpu = [(b - a) / TICK / dt * 100 for a, b in zip(c0, c1, strict=True)]
        rows.append((f"{n} ({backend})", f"{(r1 - r0) * 60 / dt:.1f}", f"{sum(cpu):.2f} %",
                     f"{med(cpu):.2f} % (max {max(cpu):.2f} %)",
                     f"{med([float(x) for x in rss]) / 1024:.1f} MiB", f"{waiting}/{n}"))
        print("  " + " | ".join(rows[-1]), flush=True)
    return rows


# -- desktops on a node ---------------------------------------------------------------------------
def classify(pids: dict[int, str]) -> dict[int, str]:
    """stream.session_pids' roles, with the node agent and the desktop session told apart."""
    out = {}
    for pid, role in pids.items():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if role == "other":
            role = "agent" if "node run --session" in cmd else "session"
        out[pid] = role
    return out


def sample(node: str, uid: int, seconds: float) -> dict[str, tuple[float, float]]:
    """CPU s/s and PSS MiB by role of the user's processes on the node over `seconds`."""
    pids = classify(session_pids(node, uid))
    c0 = {p: cpu_of(p) for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    out: dict[str, tuple[float, float]] = {}
    for pid, role in pids.items():
        cpu, mem = out.get(role, (0.0, 0.0))
        out[role] = (cpu + (cpu_of(pid) - c0[pid]) / TICK / dt, mem + pss_kib(pid) / 1024)
    return out


def idlest_node() -> str:
    out = run(["sinfo", "-h", "-N", "-p", "gpu", "-o", "%N %C"]).stdout  # CPUs A/I/O/T
    nodes = [(int(cpus.split("/")[1]), name) for name, cpus in
             (line.split() for line in out.splitlines() if line.strip())]
    return max(nodes)[1] if nodes else "gpu01"


def submit_desktop(node: str) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    proc = hpcdesk("submit", *SITE, "--json", "--set", "scheduler.gpus=0", "--set",
                   "scheduler.cpus=1", "--set", "scheduler.memory=1G", "--set",
                   f"scheduler.extra_args=['--nodelist={node}']", timeout=600)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"submit failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout), took


def node_times(sid: str) -> dict[str, float]:
    node = json.loads((SESSIONS / sid / "node.json").read_text())
    meta = json.loads((SESSIONS / sid / "session.json").read_text())
    t = node["times"]
    return {"queued": t["agent_start"] - meta["submitted"],
            "agent start -> healthy": t["healthy"] - t["agent_start"]}


def bench_desktops(node: str, seconds: float, most: int) -> tuple[list[tuple[str, ...]],
                                                                   list[tuple[str, ...]]]:
    uid, _ = user_ids(USER)
    cost: list[tuple[str, ...]] = []
    capacity: list[tuple[str, ...]] = []
    started: list[str] = []

    def add(label: str, got: dict[str, tuple[float, float]], extra: str = "") -> None:
        total_cpu = sum(c for c, _ in got.values())
        total_mem = sum(m for _, m in got.values())
        parts = ", ".join(f"{r} {c:.3f} s/s {m:.0f} MiB" for r, (c, m) in sorted(got.items()))
        cost.append((label, f"{total_cpu:.3f} s/s ({total_cpu * 100:.1f} % of a CPU)",
                     f"{total_mem:.0f} MiB", parts + extra))
        print("  " + " | ".join(cost[-1]), flush=True)

    try:
        data, took = submit_desktop(node)
        sid = str(data["session"])
        started.append(sid)
        capacity.append(("1", f"{took:.2f} s", *(f"{v:.2f} s" for v in node_times(sid).values())))
        print("  " + " | ".join(capacity[-1]), flush=True)
        time.sleep(5.0)  # the desktop settles after its start
        add("idle, no viewer", sample(node, uid, seconds))
        with browser.Chromium(window=(1280, 720)) as chrome:
            chrome.open(str(data["url"]), login=(str(data["user"]), str(data["password"])))
            deadline = time.monotonic() + 60
            while not socket_bytes(node, int(data["port"])) and time.monotonic() < deadline:
                time.sleep(0.5)
            time.sleep(5.0)  # the client connected and the stream runs
            b0 = sum(cpu_of(p) for p in chrome.pids)
            got = sample(node, uid, seconds)
            browser_cpu = (sum(cpu_of(p) for p in chrome.pids) - b0) / TICK / seconds
            add("one viewer (static screen)", got, f"; the browser {browser_cpu:.2f} s/s")
        time.sleep(5.0)
        add("idle again, the viewer gone", sample(node, uid, seconds))
        # The node's own share: submit -> URL less the time the job waited in the queue
        # (other people's jobs on the node, not this node's load, decide that part).
        first = took - node_times(sid)["queued"]
        for n in range(2, most + 1):
            data, took = submit_desktop(node)
            started.append(str(data["session"]))
            times = node_times(started[-1])
            capacity.append((str(n), f"{took:.2f} s", *(f"{v:.2f} s" for v in times.values())))
            print("  " + " | ".join(capacity[-1]), flush=True)
            if took - times["queued"] >= 2 * first:
                break
        time.sleep(5.0)
        got = sample(node, uid, seconds)
        total = sum(c for c, _ in got.values())
        cost.append((f"{len(started)} idle desktops on {node}, all together",
                     f"{total:.3f} s/s", f"{sum(m for _, m in got.values()):.0f} MiB", ""))
        print("  " + " | ".join(cost[-1]), flush=True)
    finally:
        for sid in started:
            hpcdesk("cancel", sid, *SITE, "--no-wait")
        run(["scancel", "-u", USER])
    return cost, capacity


# -- the table ------------------------------------------------------------------------------------
def table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--short", action="store_true",
                    help="small counts and short windows (0/100/300 foreign jobs, 10/100 "
                    "sessions, 1/5 waiting submits, 10 s samples, 3 desktops)")
    ap.add_argument("--only", nargs="*", default=["queue", "sessions", "waiting", "desktops"])
    ap.add_argument("--runs", type=int, help="timed runs per figure (default 7, short 3)")
    ap.add_argument("--node", help="the node the desktops run on (default: the one with "
                    "the most idle CPUs)")
    ap.add_argument("--max-desktops", type=int, help="idle desktops tried on the node "
                    "(default 6, short 3)")
    ap.add_argument("--backends", nargs="*", default=list(BACKENDS),
                    help="scheduler backends for the queue and waiting figures")
    args = ap.parse_args()
    short = args.short
    runs = args.runs or (3 if short else 7)
    atexit.register(cancel_all)
    print(f"# hpcdesk scale benchmark on {platform.node()}: {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}, Python {platform.python_version()}; "
          f"{run(['sinfo', '-V']).stdout.strip()}; MaxJobCount {max_job_count()}; "
          f"{jobs_of(None)} jobs in the queue at the start", flush=True)
    results: list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]] = []
    backends = [b for b in args.backends if b != "pyslurm" or pyslurm_usable()]
    if backends != args.backends:
        print("# pyslurm is not usable here (`hpcdesk doctor` says why): slurm-cli only")
    try:
        if "queue" in args.only:
            levels = [0, 100, 300] if short else [0, 1000, 10000]
            results.append(("Other users' jobs in the queue (median, min..max)",
                            ("other users' jobs", "command", "wall", "CPU",
                             "over `squeue -u` (wall / CPU); raw: records",
                             "the user's RPCs"),
                            bench_queue(levels, runs, backends)))
        if "sessions" in args.only:
            counts = [10, 100] if short else [10, 100, 500]
            results.append(("Sessions of one user (median, min..max)",
                            ("sessions", "command", "wall", "CPU", "the user's RPCs"),
                            bench_sessions(counts, runs)))
        if "waiting" in args.only:
            counts = [1, 5] if short else [1, 10, 30]
            seconds, warmup = (20.0, 10.0) if short else (60.0, 16.0)
            results.append((f"Submits waiting on held jobs ({seconds:.0f} s window after "
                            f"{warmup:.0f} s)",
                            ("waiting submits (backend)", "the user's RPCs/min, all",
                             "login CPU, all", "login CPU per submit", "PSS per submit",
                             "still waiting"),
                            bench_waiting(counts, seconds, warmup, backends)))
        if "desktops" in args.only:
            most = args.max_desktops or (3 if short else 6)
            node = args.node or idlest_node()
            cost, capacity = bench_desktops(node, 10.0 if short else 30.0, most)
            results.append((f"One CPU-only desktop on {node} (CPU s/s and PSS by process)",
                            ("state", "CPU", "memory", "by process"), cost))
            results.append((f"Idle desktops (1 CPU, 1G each) on {node}, 8 CPUs, added one at "
                            f"a time (at most {most}; stops when submit -> URL, less the time "
                            "queued, doubles)",
                            ("desktops", "submit -> URL", "queued (sbatch -> agent)",
                             "agent start -> healthy"), capacity))
    finally:
        cancel_all()
        for title, header, rows in results:
            table(title, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
