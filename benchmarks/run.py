#!/usr/bin/env python3
"""hpcdesk benchmarks on the dev cluster (not a test: prints numbers, asserts nothing).

Run as root after `make cluster-up` (docs/performance.md):
    /opt/hpcdesk/venv/bin/python -m benchmarks.run [--runs 10] [--only NAME ...]

Figures (median, p10..p90 and min..max over the runs):
  a) desktop healthy on the node -> URL printed by `hpcdesk submit`
  b) slurmctld RPCs by type (sdiag deltas) for one submit -> ready -> cancel
  c) job-info RPCs for `hpcdesk list` with 50 sessions
  d) job-info RPCs per minute while one submit waits on a pending (held) job, next to a
     batchspawner-style baseline (squeue every 0.5 s) measured in the same run
  e) cold start: `hpcdesk --help`; `hpcdesk list` against raw `squeue`
  f) node agent: job start -> desktop processes launched; healthy -> published
  g) submit -> ready (host runtime; apptainer when --apptainer-image is given)
  h) scheduler backends side by side (slurm-cli and pyslurm): RPCs for submit -> ready ->
     cancel, job-info RPCs and wall time of `hpcdesk list` with 50 sessions, its cold start
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from harness import devcluster
from harness.devcluster import SITE, USER, VENV, home

HOME = home(USER)
JOB_INFO = ("REQUEST_JOB_INFO", "REQUEST_JOB_USER_INFO", "REQUEST_JOB_INFO_SINGLE")


def as_user(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(devcluster.as_user(USER, *args), capture_output=True, text=True,
                          timeout=timeout, cwd="/", check=False)


def hpcdesk(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return as_user(str(VENV / "bin/hpcdesk"), *args, timeout=timeout)


def sdiag() -> Counter[str]:
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("Remote Procedure Call statistics by message type", 1)[-1]
    section = section.split("Remote Procedure Call statistics by user", 1)[0]
    return Counter({m.group(1): int(m.group(2))
                    for m in re.finditer(r"^\s*(\w+)\s+\(\s*\d+\)\s+count:(\d+)", section, re.M)})


def user_rpcs(user: str = USER) -> int:
    """RPCs that `user` sent to slurmctld so far (sdiag's per-user section): unlike the
    per-type counts, other users' activity on the cluster does not enter it."""
    out = subprocess.run(["sdiag"], capture_output=True, text=True, check=True).stdout
    section = out.split("Remote Procedure Call statistics by user", 1)[-1]
    m = re.search(rf"^\s*{re.escape(user)}\s+\(\s*\d+\)\s+count:(\d+)", section, re.M)
    return int(m.group(1)) if m else 0


def delta(before: Counter[str], after: Counter[str]) -> Counter[str]:
    """RPCs between two sdiag snapshots, less the measuring sdiag call's own STATS_INFO."""
    d = after.copy()
    d.subtract(before)
    d["REQUEST_STATS_INFO"] -= 1
    return Counter({k: v for k, v in d.items() if v > 0})


def stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = sorted(values)
    med = statistics.median(v)
    if len(v) >= 10:
        q = statistics.quantiles(v, n=10)
        spread = f"p10..p90 {q[0]:.3g}..{q[-1]:.3g}"
    else:
        spread = f"min..max {v[0]:.3g}..{v[-1]:.3g}"
    return f"median {med:.3g} ({spread}, n={len(v)})"


def one_desktop(extra: list[str]) -> dict[str, Any]:
    t0 = time.time()
    proc = hpcdesk("submit", *SITE, "--json", *extra)
    t_printed = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"submit failed: {proc.stderr}")
    data = json.loads(proc.stdout)
    sdir = HOME / ".hpcdesk/sessions" / data["session"]
    node = json.loads((sdir / "node.json").read_text())
    meta = json.loads((sdir / "session.json").read_text())
    times = node["times"]
    hpcdesk("cancel", data["session"], *SITE)
    return {
        "submit_to_url": t_printed - t0,
        "healthy_to_printed_ms": (meta["ready_at"] - times["healthy"]) * 1000,
        "healthy_to_published_ms": (times["published"] - times["healthy"]) * 1000,
        "agent_start_to_launched_ms": (times["desktop_launched"] - times["agent_start"]) * 1000,
        "agent_start_to_healthy": times["healthy"] - times["agent_start"],
        "submitted_to_agent_start": times["agent_start"] - meta["submitted"],
    }


def bench_desktops(runs: int, extra: list[str], label: str) -> dict[str, list[float]]:
    series: dict[str, list[float]] = {}
    rpc_totals: list[Counter[str]] = []
    for i in range(runs):
        before = sdiag()
        r = one_desktop(extra)
        time.sleep(1.0)  # let the cancel's own RPCs land in the counters
        rpc = delta(before, sdiag())
        rpc_totals.append(rpc)
        for k, v in r.items():
            series.setdefault(k, []).append(v)
        series.setdefault("rpc_total", []).append(float(sum(rpc.values())))
        print(f"  {label} run {i + 1}/{runs}: submit->URL {r['submit_to_url']:.2f}s, "
              f"healthy->printed {r['healthy_to_printed_ms']:.0f} ms, RPCs {sum(rpc.values())}",
              flush=True)
    by_type: dict[str, list[float]] = {}
    for rpc in rpc_totals:
        for k in set().union(*rpc_totals):
            by_type.setdefault(k, []).append(float(rpc.get(k, 0)))
    series.update({f"rpc {k}": v for k, v in sorted(by_type.items())})
    return series


def bench_list(n: int) -> tuple[dict[str, float], Callable[[], None]]:
    held = ["--no-wait", "--set", "scheduler.extra_args=['--hold']"]
    sessions = []
    for _ in range(n):
        proc = hpcdesk("submit", *SITE, "--json", *held)
        sessions.append(json.loads(proc.stdout))
    time.sleep(1.5)  # past the shared queue snapshot's lifetime: `list` must ask Slurm
    before = sdiag()
    t0 = time.perf_counter()
    proc = hpcdesk("list", *SITE, "--json")
    wall = time.perf_counter() - t0
    rpc = delta(before, sdiag())
    listed = len(json.loads(proc.stdout))

    def cleanup() -> None:
        subprocess.run(["scancel", "-u", USER], check=False)

    return {"sessions_listed": listed, "job_info_rpcs": sum(rpc[k] for k in JOB_INFO),
            "all_rpcs": sum(rpc.values()), "wall_s": wall}, cleanup


def bench_pending_wait(seconds: float, clients: int = 1) -> dict[str, float]:
    cmd = [str(VENV / "bin/hpcdesk"), "submit", *SITE, "--set",
           "scheduler.extra_args=['--hold']"]
    argv = devcluster.as_user(USER, *cmd)
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(clients)]
    time.sleep(2)  # submitted and waiting
    before = sdiag()
    time.sleep(seconds)
    ours = sum(delta(before, sdiag())[k] for k in JOB_INFO)
    for proc in procs:
        subprocess.run(["pkill", "-INT", "-P", str(proc.pid)], check=False)
        proc.wait(30)
    subprocess.run(["scancel", "-u", USER], check=False)
    # Baseline in the same run: batchspawner-style, squeue for each job every 0.5 s.
    jobs = [subprocess.run(["sbatch", "--parsable", "--hold", "-p", "gpu", "--wrap", "sleep 600"],
                           capture_output=True, text=True, check=True).stdout.strip()
            .split(";")[0] for _ in range(clients)]
    before = sdiag()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for job in jobs:
            subprocess.run(["squeue", "-h", "-j", job], capture_output=True, check=False)
        time.sleep(0.5)
    base = sum(delta(before, sdiag())[k] for k in JOB_INFO)
    subprocess.run(["scancel", *jobs], check=False)
    per_min = 60.0 / seconds
    return {"hpcdesk_per_min": ours * per_min, "baseline_per_min": base * per_min,
            "ratio_baseline_over_hpcdesk": (base / ours) if ours else float("inf")}


def bench_cold_start(runs: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"hpcdesk --help": [], "hpcdesk list": [], "squeue": []}
    for _ in range(runs):
        for name, argv in (("hpcdesk --help", [str(VENV / "bin/hpcdesk"), "--help"]),
                           ("hpcdesk list", [str(VENV / "bin/hpcdesk"), "list", *SITE]),
                           ("squeue", ["squeue", "-u", USER])):
            t0 = time.perf_counter()
            as_user(*argv)
            out[name].append((time.perf_counter() - t0) * 1000)
    # runuser itself costs time: measure it and subtract, so the figures are the commands'.
    base = []
    for _ in range(runs):
        t0 = time.perf_counter()
        as_user("/bin/true")
        base.append((time.perf_counter() - t0) * 1000)
    b = statistics.median(base)
    return {k: [x - b for x in v] for k, v in out.items()}


def bench_backends(runs: int, backends: list[str]) -> list[tuple[str, str]]:
    """The user's own RPCs (sdiag per user), so other users on the cluster do not count."""
    rows: list[tuple[str, str]] = []
    for backend in backends:
        extra = ["--set", f"scheduler.backend={backend}"]
        own: list[float] = []
        url: list[float] = []
        for _ in range(runs):
            before = user_rpcs()
            url.append(one_desktop(extra)["submit_to_url"])
            time.sleep(1.0)  # let the cancel's own RPCs land in the counters
            own.append(float(user_rpcs() - before))
        rows.append((f"h) {backend}: the user's RPCs, submit->ready->cancel", stats(own)))
        rows.append((f"   {backend}: submit -> URL (s)", stats(url)))
        held = ["--no-wait", "--set", "scheduler.extra_args=['--hold']", *extra]
        for _ in range(50):
            hpcdesk("submit", *SITE, *held)
        time.sleep(1.5)  # past the shared queue snapshot's lifetime: `list` must ask Slurm
        before = user_rpcs()
        t0 = time.perf_counter()
        listed = hpcdesk("list", *SITE, "--json", *extra)
        wall = time.perf_counter() - t0
        list_rpcs = user_rpcs() - before
        subprocess.run(["scancel", "-u", USER], check=False)
        rows.append((f"   {backend}: `hpcdesk list`, 50 sessions: the user's RPCs",
                     f"{list_rpcs} ({len(json.loads(listed.stdout))} listed, "
                     f"{wall * 1000:.0f} ms)"))
        cold = []
        for _ in range(runs):
            t0 = time.perf_counter()
            hpcdesk("list", *SITE, *extra)
            cold.append((time.perf_counter() - t0) * 1000)
        rows.append((f"   {backend}: `hpcdesk list` cold start (ms, with runuser)", stats(cold)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--only", nargs="*",
                    default=["desktops", "list", "pending", "cold", "backends"])
    ap.add_argument("--pending-seconds", type=float, default=60.0)
    ap.add_argument("--apptainer-image", help="also benchmark runtime apptainer with this image")
    ap.add_argument("--backends", nargs="*", default=["slurm-cli", "pyslurm"],
                    help="scheduler backends compared in h) (with --only backends)")
    args = ap.parse_args()
    print(f"# hpcdesk benchmarks on {platform.node()}: {os.cpu_count()} CPUs, "
          f"{platform.platform()}, Python {platform.python_version()}")
    slurm = subprocess.run(["sinfo", "-V"], capture_output=True, text=True).stdout.strip()
    print(f"# slurm: {slurm}")
    results: list[tuple[str, str]] = []
    if "desktops" in args.only:
        s = bench_desktops(args.runs, [], "host")
        results += [
            ("a) healthy -> URL printed (ms)", stats(s["healthy_to_printed_ms"])),
            ("   healthy -> published on node (ms)", stats(s["healthy_to_published_ms"])),
            ("b) slurmctld RPCs, submit->ready->cancel", stats(s["rpc_total"])),
        ]
        results += [(f"   {k}", stats(v)) for k, v in s.items() if k.startswith("rpc ")]
        results += [
            ("f) agent: job start -> desktop launched (ms)",
             stats(s["agent_start_to_launched_ms"])),
            ("   agent: job start -> healthy (s)", stats(s["agent_start_to_healthy"])),
            ("   sbatch -> agent start (s)", stats(s["submitted_to_agent_start"])),
            ("g) submit -> URL, host runtime (s)", stats(s["submit_to_url"])),
        ]
        if args.apptainer_image:
            extra = ["--runtime", "apptainer", "--image", args.apptainer_image]
            a = bench_desktops(max(3, args.runs // 3), extra, "apptainer")
            results.append(("g) submit -> URL, apptainer runtime (s)", stats(a["submit_to_url"])))
    if "list" in args.only:
        r, cleanup = bench_list(50)
        cleanup()
        results.append(("c) `hpcdesk list` with 50 sessions: job-info RPCs",
                        f"{r['job_info_rpcs']} (all RPCs {r['all_rpcs']}, "
                        f"{r['sessions_listed']} listed, {r['wall_s'] * 1000:.0f} ms)"))
    if "pending" in args.only:
        for clients in (1, 5):
            p = bench_pending_wait(args.pending_seconds, clients)
            results.append((f"d) job-info RPCs/min, {clients} submit(s) on pending jobs",
                            f"{p['hpcdesk_per_min']:.1f} (batchspawner-style 0.5 s loop: "
                            f"{p['baseline_per_min']:.1f}; "
                            f"ratio {p['ratio_baseline_over_hpcdesk']:.1f}x)"))
    if "cold" in args.only:
        c = bench_cold_start(args.runs)
        results += [(f"e) {k} (ms, runuser subtracted)", stats(v)) for k, v in c.items()]
    if "backends" in args.only:
        results += bench_backends(args.runs, args.backends)
    width = max(len(k) for k, _ in results)
    print()
    for k, v in results:
        print(f"{k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
