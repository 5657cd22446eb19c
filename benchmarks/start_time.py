#!/usr/bin/env python3
"""Submit -> URL for the host runtime, the Xfce (debian) image and the KDE image, in one run
(issue 21; not a test: prints numbers, asserts nothing). Run as root after `make cluster-up`,
with both images built (`hpcdesk image build --flavor debian|kde`):

    $HPCDESK_VENV/bin/python -m benchmarks.start_time [--runs 5] [--only host debian kde]

For each desktop it prints submit -> URL (what a person waits for) and where the time goes:
  queue+launch   sbatch accepted -> the node agent starts (Slurm, job script)
  agent          agent start -> desktop launched (GPU binding, ports, secrets, X files)
  desktop        launched -> healthy: the container (SIF mount, container start), X, Selkies;
                 the image's entrypoint stamps its own start (after the SIF mount and the
                 container start), X taking clients, and Selkies listening (container.log)
  publish        healthy -> URL printed
and, for the images, `apptainer exec --contain IMAGE true` alone (SIF mount + container start).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
import sys
import time
from pathlib import Path

from benchmarks.run import HOME, as_user, hpcdesk
from harness.devcluster import SITE

IMAGE_DIR = "/var/cache/hpcdesk/images"
DESKTOPS = {
    "host": [],
    "debian": ["--runtime", "apptainer", "--image", "debian", "--set",
               f"runtime.image_dir={IMAGE_DIR}"],
    "kde": ["--runtime", "apptainer", "--image", "kde", "--set",
            f"runtime.image_dir={IMAGE_DIR}"],
}
# The Debian images' entrypoint stamps these lines with $EPOCHREALTIME (images/debian/).
STAMPS = {"entrypoint": r"entrypoint started at (\d+\.\d+)",
          "x_ready": r"X server took clients at (\d+\.\d+)",
          "web_listens": r"web server listens at (\d+\.\d+)"}


def one(extra: list[str]) -> dict[str, float]:
    t0 = time.time()
    proc = hpcdesk("submit", *SITE, "--json", *extra)
    t1 = time.time()
    if proc.returncode != 0:
        raise RuntimeError(f"submit failed: {proc.stderr[-2000:]}")
    data = json.loads(proc.stdout)
    sdir = HOME / ".hpcdesk/sessions" / data["session"]
    node = json.loads((sdir / "node.json").read_text())
    meta = json.loads((sdir / "session.json").read_text())
    t = node["times"]
    out = {"submit_to_url": t1 - t0,
           "queue+launch": t["agent_start"] - meta["submitted"],
           "agent": t["desktop_launched"] - t["agent_start"],
           "desktop": t["healthy"] - t["desktop_launched"],
           "publish": meta["ready_at"] - t["healthy"]}
    log = sdir / "container.log"
    if log.exists():
        text = log.read_text(errors="replace")
        for key, pattern in STAMPS.items():
            m = re.search(pattern, text)
            if m:
                out[f"launched->{key}"] = float(m[1]) - t["desktop_launched"]
    hpcdesk("cancel", data["session"], *SITE)
    return out


def container_start(flavor: str, runs: int) -> list[float]:
    found = sorted(Path(IMAGE_DIR).glob(f"{flavor}-bookworm-*.sif"),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        return []
    times = []
    for _ in range(runs):
        t0 = time.time()
        as_user("apptainer", "exec", "--contain", "--cleanenv", str(found[-1]), "true")
        times.append(time.time() - t0)
    return times


def fmt(values: list[float]) -> str:
    if not values:
        return "n/a"
    v = sorted(values)
    return f"median {statistics.median(v):.2f} s (min {v[0]:.2f}, max {v[-1]:.2f}, n={len(v)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--only", nargs="*", default=list(DESKTOPS), choices=list(DESKTOPS))
    ap.add_argument("--desktop", action="append", default=[], metavar="LABEL=SUBMIT_ARGS",
                    help="also a desktop of your own, e.g. an older build: "
                    "'kde-before=--runtime apptainer --image /path/kde-old.sif'")
    args = ap.parse_args()
    for spec in args.desktop:
        label, _, extra = spec.partition("=")
        DESKTOPS[label] = shlex.split(extra)
    report: list[str] = []
    for name in [*args.only, *(s.partition("=")[0] for s in args.desktop)]:
        series: dict[str, list[float]] = {}
        for i in range(args.runs):  # interleaving would mix caches; one desktop kind at a time
            r = one(DESKTOPS[name])
            for k, v in r.items():
                series.setdefault(k, []).append(v)
            print(f"  {name} run {i + 1}/{args.runs}: submit->URL {r['submit_to_url']:.2f}s "
                  + " ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "submit_to_url"),
                  flush=True)
        report.append(f"{name:7} submit -> URL {fmt(series['submit_to_url'])}")
        for k, v in series.items():
            if k != "submit_to_url":
                report.append(f"          {k:22} {fmt(v)}")
        if name in ("debian", "kde"):
            report.append(f"          {'apptainer exec true':22} "
                          f"{fmt(container_start(name, args.runs))}")
    print("\nsubmit -> URL (s), same run:\n" + "\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
