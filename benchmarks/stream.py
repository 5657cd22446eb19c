#!/usr/bin/env python3
"""How good is the picture? Glass-to-glass latency, frame rate, bandwidth and CPU of the
desktop stream, measured in a real headless Chromium (not a test: prints numbers).

Run as root with the dev cluster up (docs/performance.md):
    HPCDESK_DEV_USER=hpcuser HPCDESK_VENV=/opt/hpcdesk/venv \\
        /opt/hpcdesk/venv/bin/python -m benchmarks.stream [--seconds 20] [--only NAME ...]
        [--image-dir DIR] [--startup-runs 10] [--node gpu01]

For each configuration it submits a desktop with `hpcdesk submit`, starts
benchmarks/stream_clock.py on the desktop's display (the wall-clock time in milliseconds as
big black/white blocks, and with "motion" a full-screen animation), opens the session URL in
headless Chromium (harness/browser.py) and injects a reader over DevTools: on every
animation frame it copies the top-left corner of the element the client paints into (the
largest canvas, or a video element), decodes the time and records Date.now() - time for each
new code. Browser and node run on this machine and share its CLOCK_REALTIME; the benchmark
checks that the node's processes and the browser are in the same time namespace.

Per configuration: latency p50/p95/p99 (ms); fps delivered (new codes per second), unique
frames painted and animation frames run; bytes/s on the wire (the session's TCP socket on the
node, from `ss`, and the node's network namespace transmit counter, which other users' traffic
on that node also enters); CPU seconds per second of the session's processes on the node (X
server, Selkies and its encoder, VNC server) and of the browser.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.run import HOME, hpcdesk
from harness import browser
from harness.devcluster import DEVCLUSTER, SITE, USER, on_display

CLOCK = Path(__file__).resolve().parent / "stream_clock.py"
BLOCK = 32
TICK = os.sysconf("SC_CLK_TCK")

# Runs in the page: reads the painted picture on every animation frame and decodes the clock.
READER = r"""
(() => {
  const B = %(block)d, BITS = 24, SW = %(width)d, MASK = (1 << BITS) - 1;
  const st = window.__hpcdeskStream = {lat: [], ticks: 0, codes: 0, bad: 0, last: -1,
                                       el: '', t0: Date.now()};
  const probe = document.createElement('canvas');
  probe.width = (BITS + 2) * B; probe.height = 2 * B;
  const pctx = probe.getContext('2d', {willReadFrequently: true});
  function painted() {  // the largest visible canvas or playing video
    let best = null, area = 0;
    const roots = [document];
    for (const f of document.querySelectorAll('iframe')) {
      try { if (f.contentDocument) roots.push(f.contentDocument); } catch (e) {}
    }
    for (const r of roots) {
      for (const e of r.querySelectorAll('canvas, video')) {
        const a = (e.videoWidth || e.width || 0) * (e.videoHeight || e.height || 0);
        if (e.getBoundingClientRect().width > 0 && a > area && !(e.paused === true)) {
          area = a; best = e;
        }
      }
    }
    return best;
  }
  function readCode(img, w) {  // the clock code in a picture of width w, or null
    const s = w / SW;
    pctx.drawImage(img, 0, 0, probe.width * s, probe.height * s,
                   0, 0, probe.width, probe.height);
    const px = pctx.getImageData(0, 0, probe.width, probe.height).data;
    const bit = (i, row) => {
      const o = (((row * B + (B >> 1)) * probe.width) + i * B + (B >> 1)) * 4;
      return (px[o] + px[o + 1] + px[o + 2]) > 384 ? 1 : 0;
    };
    let ok = bit(0, 0) === 1 && bit(BITS + 1, 0) === 0, v = 0;
    for (let i = 0; i < BITS + 2 && ok; i++) ok = bit(i, 0) !== bit(i, 1);
    for (let i = 1; i <= BITS && ok; i++) v = v * 2 + bit(i, 0);
    return ok ? v : null;
  }
  const since = (when, v) => ((Math.floor(when) & MASK) - v + (1 << BITS)) %% (1 << BITS)
                             + (when %% 1);
  function decode(el, when) {  // when: the wall-clock time this picture is shown
    const w = el.videoWidth || el.width;
    st.el = el.tagName + ' ' + w + 'x' + (el.videoHeight || el.height);
    try {
      const v = readCode(el, w);
      if (v === null) st.bad++;
      else if (v !== st.last) {
        st.last = v; st.codes++;
        st.lat.push(since(when, v));
        const d = st.decoded.get(v);  // [decode called, decoded] wall-clock times
        if (d && d[0]) st.stage.push([since(d[0], v), d[1] - d[0], when - d[1]]);
      }
    } catch (e) { st.err = String(e); }
  }
  // Stages in the page: when a chunk is handed to a WebCodecs decoder, and when its decoded
  // frame is handed on for display (a MediaStreamTrackGenerator's writer); the frame's own
  // pixels name its code. (A client that decodes in a worker or in a <video> leaves these
  // unseen: then only the total is printed.)
  st.decodeCall = new Map(); st.decoded = new Map(); st.stage = [];
  const dec = VideoDecoder.prototype.decode;
  VideoDecoder.prototype.decode = function (chunk) {
    st.decodeCall.set(chunk.timestamp, performance.timeOrigin + performance.now());
    if (st.decodeCall.size > 600) st.decodeCall.delete(st.decodeCall.keys().next().value);
    return dec.call(this, chunk);
  };
  const wr = WritableStreamDefaultWriter.prototype.write;
  WritableStreamDefaultWriter.prototype.write = function (frame) {
    if (typeof VideoFrame !== 'undefined' && frame instanceof VideoFrame) {
      const t = performance.timeOrigin + performance.now();
      const code = readCode(frame, frame.displayWidth);
      if (code !== null) st.decoded.set(code, [st.decodeCall.get(frame.timestamp), t]);
      if (st.decoded.size > 600) st.decoded.delete(st.decoded.keys().next().value);
    }
    return wr.call(this, frame);
  };
  const watched = new WeakSet();
  function onVideoFrame(v) {  // requestVideoFrameCallback: once per frame composited
    const cb = (_now, meta) => {
      st.presented = meta.presentedFrames;
      if (painted() === v) decode(v, performance.timeOrigin + meta.expectedDisplayTime);
      v.requestVideoFrameCallback(cb);
    };
    v.requestVideoFrameCallback(cb);
  }
  function tick(t) {  // canvases: read on every animation frame, shown at its paint
    st.ticks++;
    const el = painted();
    if (el && el.tagName === 'VIDEO') {
      if (!watched.has(el) && el.requestVideoFrameCallback) { watched.add(el); onVideoFrame(el); }
    } else if (el) {
      decode(el, performance.timeOrigin + t);
    }
    requestAnimationFrame(tick);
  }
  requestAnimationFrame(tick);
  return true;
})()
"""
RESET = ("(() => { const s = window.__hpcdeskStream; s.lat = []; s.ticks = 0; s.codes = 0; "
         "s.bad = 0; s.stage = []; s.t0 = Date.now(); return true; })()")
COLLECT = ("(() => { const s = window.__hpcdeskStream; if (!s) return null; "
           "return {lat: s.lat, ticks: s.ticks, codes: s.codes, bad: s.bad, el: s.el, "
           "err: s.err || '', stage: s.stage, "
           "seconds: (Date.now() - s.t0) / 1000}; })()")


@dataclass
class Config:
    name: str
    width: int
    height: int
    motion: bool
    submit: list[str] = field(default_factory=list)
    note: str = ""


# Each knob, one at a time, against the defaults (x264, 1920x1080 with motion).
TUNING = [
    ["desktop.framerate=30"], ["desktop.framerate=120"],
    ["desktop.video_bitrate=4000"], ["desktop.video_bitrate=16000"],
    ["desktop.rate_control=crf"], ["desktop.rate_control=crf", "desktop.video_crf=35"],
    ["desktop.encode_threading=always"], ["desktop.encode_threading=never"],
    ["desktop.encoder=jpeg", "desktop.jpeg_quality=20"],
    ["desktop.encoder=jpeg", "desktop.jpeg_quality=60"],
]


def tuning() -> list[Config]:
    out = []
    for motion in (True, False):
        scene = "motion" if motion else "static"
        out.append(Config(f"tune defaults 1920x1080 {scene}", 1920, 1080, motion))
        for knobs in TUNING:
            out.append(Config(f"tune {' '.join(knobs)} 1920x1080 {scene}", 1920, 1080, motion,
                              [a for kv in knobs for a in ("--set", kv)]))
    return out


def configurations(image_dir: str | None) -> list[Config]:
    out: list[Config] = []
    selkies = [
        ("x264", ["--set", "desktop.encoder=x264enc"]),
        ("x264-striped", ["--set", "desktop.encoder=x264enc-striped"]),
        ("jpeg", ["--set", "desktop.encoder=jpeg"]),
    ]
    for w, h in ((1280, 720), (1920, 1080)):
        for motion in (True, False):
            scene = "motion" if motion else "static"
            for enc, opts in selkies:
                out.append(Config(f"selkies-ws {enc} {w}x{h} {scene}", w, h, motion, opts))
            out.append(Config(f"selkies-webrtc x264 {w}x{h} {scene}", w, h, motion,
                              ["--set", "desktop.transport=webrtc"]))
            if image_dir:
                out.append(Config(f"vnc (apptainer) {w}x{h} {scene}", w, h, motion,
                                  ["--runtime", "apptainer", "--image", "debian",
                                   "--interface", "vnc",
                                   "--set", f"runtime.image_dir={image_dir}"]))
    return out


# -- measurement helpers ---------------------------------------------------------------------
def host_load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def other_test_runs() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "pytest"], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(uid-independent) utime+stime ticks and the net namespace inode of `pid`."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12]), os.stat(f"/proc/{pid}/ns/net").st_ino
    except (OSError, IndexError, ValueError):
        return None


def session_pids(node: str, uid: int) -> dict[int, str]:
    """The user's processes in the node's network namespace, by role, without the clock."""
    ns = os.stat(f"/run/netns/{node}").st_ino
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid or os.stat(f"/proc/{pid}/ns/net").st_ino != ns:
                continue
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "stream_clock" in cmd:
            continue
        found[pid] = role(cmd)
    return found


def role(cmd: str) -> str:
    if re.search(r"\b(Xorg|Xvfb|Xvnc|Xtigervnc)\b", cmd):
        return "X"
    if "selkies" in cmd:
        return "selkies"
    if re.search(r"websockify|novnc|vnc", cmd, re.I):
        return "vnc"
    return "other"


def cpu_ticks(pids: dict[int, str]) -> dict[str, int]:
    by_role: dict[str, int] = {}
    for pid, r in pids.items():
        st = proc_stat(pid)
        if st:
            by_role[r] = by_role.get(r, 0) + st[0]
    return by_role


def browser_ticks(pids: list[int]) -> int:
    return sum(st[0] for st in (proc_stat(p) for p in pids) if st)


def socket_bytes(node: str, port: int) -> dict[str, int]:
    """Bytes the node sent on each TCP connection of the session's port, from `ss`."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{node}", "ss", "-tinH", "state",
                          "established", f"( sport = :{port} )"], capture_output=True,
                         text=True, check=False).stdout
    sent: dict[str, int] = {}
    peer = ""
    for line in out.splitlines():
        if not line.startswith((" ", "\t")):
            peer = " ".join(line.split()[2:4])
        m = re.search(r"bytes_sent:(\d+)", line)
        if m and peer:
            sent[peer] = int(m.group(1))
    return sent


def netns_tx(node: str) -> int:
    out = subprocess.run(["nsenter", f"--net=/run/netns/{node}", "cat", "/proc/net/dev"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(line.split(":", 1)[1].split()[8]) for line in out.splitlines()
               if ":" in line and not line.strip().startswith("lo:"))


def same_clock(node_pid: int, browser_pid: int) -> str:
    """Both sides read CLOCK_REALTIME of one kernel; a time namespace could only offset the
    monotonic and boot clocks, and it is checked to be the same one anyway."""
    a = os.readlink(f"/proc/{node_pid}/ns/time")
    b = os.readlink(f"/proc/{browser_pid}/ns/time")
    if a != b:
        raise RuntimeError(f"node and browser are in different time namespaces ({a}, {b})")
    return a


def pct(values: list[float], p: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


# -- one configuration ----------------------------------------------------------------------
def measure(cfg: Config, node: str, seconds: float, warmup: float) -> dict[str, Any]:
    submit = hpcdesk("submit", *SITE, "--json", "--resolution",
                     f"{cfg.width}x{cfg.height}", "--set",
                     f"scheduler.extra_args=['--nodelist={node}']", *cfg.submit, timeout=600)
    if submit.returncode != 0:
        raise RuntimeError(f"submit failed: {submit.stderr.strip()[-800:]}")
    data = json.loads(submit.stdout)
    sid = str(data["session"])
    clock: subprocess.Popen[bytes] | None = None
    try:
        state = json.loads((HOME / ".hpcdesk/sessions" / sid / "node.json").read_text())
        argv = ["bash", str(DEVCLUSTER), "exec", node, *on_display(
            USER, state, "python3", str(CLOCK), "--block", str(BLOCK),
            *(["--motion"] if cfg.motion else []))]
        clock = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 start_new_session=True)
        uid = int(subprocess.run(["id", "-u", USER], capture_output=True, text=True,
                                 check=True).stdout)
        with browser.Chromium(window=(cfg.width, cfg.height)) as chrome:
            # Credentials answer the browser's prompt (in the URL they would break the page's
            # own fetch() calls, and with them WebRTC's ICE servers).
            chrome.open(str(data["url"]), login=(str(data["user"]), str(data["password"])))
            deadline = time.monotonic() + 90
            while True:  # until the client paints decodable codes
                got = chrome.evaluate(COLLECT)
                if got is None:  # (again) after the page loaded or navigated on
                    chrome.evaluate(READER % {"block": BLOCK, "width": cfg.width})
                    got = {"codes": 0, "el": "", "err": "", "bad": 0}
                if got["codes"] >= 10:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no clock decoded in the browser: {got['el']!r} "
                                       f"{got['err']!r}, {got['bad']} unreadable frames")
                time.sleep(0.5)
            time.sleep(warmup)
            pids = session_pids(node, uid)
            clock_ns = same_clock(next(iter(pids)), chrome.pids[0])
            bpids = chrome.pids
            port = int(data["port"])
            c0, b0, s0, n0 = cpu_ticks(pids), browser_ticks(bpids), socket_bytes(node, port), \
                netns_tx(node)
            chrome.evaluate(RESET)
            t0 = time.monotonic()
            time.sleep(seconds)
            got = chrome.evaluate(COLLECT)
            dt = time.monotonic() - t0
            c1, b1, s1, n1 = cpu_ticks(pids), browser_ticks(bpids), socket_bytes(node, port), \
                netns_tx(node)
    finally:
        if clock is not None:
            os.killpg(clock.pid, 15)
            clock.wait(10)
        hpcdesk("cancel", sid, *SITE)
    lat = [float(v) for v in got["lat"]]
    node_cpu = {r: (c1.get(r, 0) - c0.get(r, 0)) / TICK / dt for r in c1}
    return {
        "config": cfg.name, "n": len(lat), "p50": pct(lat, 50), "p95": pct(lat, 95),
        "p99": pct(lat, 99), "fps": got["codes"] / got["seconds"], "unique": got["codes"],
        "raf_fps": got["ticks"] / got["seconds"], "unreadable": got["bad"],
        "socket_Bps": sum(v - s0.get(k, 0) for k, v in s1.items()) / dt,
        "netns_Bps": (n1 - n0) / dt,
        "node_cpu": sum(node_cpu.values()), "node_cpu_by_role": node_cpu,
        "browser_cpu": (b1 - b0) / TICK / dt, "painted_into": got["el"], "time_ns": clock_ns,
        "encoder": data.get("encoder"), "stages": stages(got),
    }


# -- startup: agent start -> healthy, host runtime ------------------------------------------
STARTUP_VARIANTS = {
    "before (Selkies copies its web client on every start)": ["--set",
                                                              "runtime.selkies_web_root=copy"],
    "after (served in place)": [],
}


def startup(runs: int, node: str) -> None:
    """Agent start -> healthy, the variants interleaved run by run (same load for both)."""
    series: dict[str, dict[str, list[float]]] = {k: {} for k in STARTUP_VARIANTS}
    for i in range(runs):
        for label, opts in STARTUP_VARIANTS.items():
            proc = hpcdesk("submit", *SITE, "--json", "--set",
                           f"scheduler.extra_args=['--nodelist={node}']", *opts, timeout=300)
            if proc.returncode != 0:
                print(f"  startup run {i + 1} {label}: submit failed: {proc.stderr[-300:]}")
                continue
            sid = json.loads(proc.stdout)["session"]
            t = json.loads((HOME / ".hpcdesk/sessions" / sid / "node.json").read_text())["times"]
            hpcdesk("cancel", sid, *SITE)
            for name, a, b in (("agent start -> processes launched", "agent_start",
                                "desktop_launched"),
                               ("launched -> healthy", "desktop_launched", "healthy"),
                               ("agent start -> healthy", "agent_start", "healthy")):
                series[label].setdefault(name, []).append(t[b] - t[a])
    print(f"startup, host runtime ({runs} runs each, interleaved; {host_load()}):")
    for label, figures in series.items():
        for name, values in figures.items():
            v = sorted(values)
            print(f"  {label}: {name}: p50 {statistics.median(v):.3f} s "
                  f"(min..max {v[0]:.3f}..{v[-1]:.3f}, n={len(v)})", flush=True)


def stages(got: dict[str, Any]) -> dict[str, float]:
    """Medians, in ms, of where a frame's time went (docs/performance.md), from the page's
    per-frame marks; empty where the client decodes out of the page's sight."""
    out: dict[str, float] = {}
    marks = got.get("stage") or []
    if marks:
        for i, name in enumerate(("drawn -> in the browser's decoder", "decode",
                                  "decoded -> shown")):
            out[name] = statistics.median(m[i] for m in marks)
    return out


def row(r: dict[str, Any]) -> str:
    roles = " ".join(f"{k} {v:.2f}" for k, v in sorted(r["node_cpu_by_role"].items()) if v > 0.005)
    return (f"| {r['config']} [{r['encoder']}] | "
            f"{r['p50']:.0f} / {r['p95']:.0f} / {r['p99']:.0f} | "
            f"{r['fps']:.1f} ({r['unique']}) | {r['socket_Bps'] / 1e6:.2f} "
            f"({r['netns_Bps'] / 1e6:.2f}) | {r['node_cpu']:.2f} ({roles}) | "
            f"{r['browser_cpu']:.2f} |")


HEADER = ("| configuration | latency p50 / p95 / p99 ms | fps delivered (unique frames) | "
          "MB/s socket (netns) | node CPU s/s (by process) | browser CPU s/s |\n"
          "|---|---|---|---|---|---|")


def main() -> int:
    # SIGTERM (a timeout, Ctrl-C's cousin) unwinds like KeyboardInterrupt, so that the
    # browser, the clock and the desktop of the running configuration are cleaned up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per configuration")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--node", default="gpu01", help="the dev cluster node to run on")
    ap.add_argument("--image-dir", help="runtime.image_dir holding the Debian image: adds the "
                    "VNC fallback (apptainer runtime)")
    ap.add_argument("--only", nargs="*", default=[],
                    help="run the configurations whose name has every one of these words")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra `hpcdesk submit --set` for every configuration (tuning runs)")
    ap.add_argument("--tune", action="store_true",
                    help="also run each tuning knob against the defaults (1920x1080)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--startup-runs", type=int, default=0,
                    help="also time agent start -> healthy (host runtime), before/after")
    args = ap.parse_args()
    configs = [c for c in configurations(args.image_dir) + (tuning() if args.tune else [])
               if all(w in c.name.split() for w in args.only)]
    extra = [a for kv in args.set for a in ("--set", kv)]
    print(f"stream benchmark: {host_load()}; other test runs: {len(other_test_runs())}",
          flush=True)
    print(HEADER, flush=True)
    results = []
    for cfg in configs:
        cfg.submit += extra
        try:
            r = measure(cfg, args.node, args.seconds, args.warmup)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"| {cfg.name} | failed: {exc} |||||", flush=True)
            continue
        results.append(r)
        print(row(r), flush=True)
        if r["stages"]:
            print("|  stages (median ms): " + ", ".join(f"{k} {v:.1f}"
                                                    for k, v in r["stages"].items()) + " |||||",
                  flush=True)
    print(f"after: {host_load()}; other test runs: {len(other_test_runs())}; browser and node "
          f"share one clock (time namespace {results[0]['time_ns'] if results else '?'})",
          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.startup_runs:
        startup(args.startup_runs, args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
