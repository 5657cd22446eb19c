"""`hpcdesk submit`: render the job, submit it, wait (push, files, scheduler), print the URL."""

from __future__ import annotations

import argparse
import getpass
import shutil
import sys
import time
from typing import Any

from hpcdesk import jobscript
from hpcdesk.commands.common import (
    emit_json,
    load_config,
    overrides_from_sets,
    root_of,
    say,
    scheduler_for,
    tail,
)
from hpcdesk.config import LoadedConfig, parse_resolution
from hpcdesk.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError, WaitTimeout
from hpcdesk.notify import Listener
from hpcdesk.request import DesktopRequest
from hpcdesk.scheduler import JobRef, Scheduler
from hpcdesk.session import Session, atomic_write, create, now, write_json
from hpcdesk.waiting import DesktopFailed, Progress, Waiter

_FLAG_KEYS = {
    "partition": "scheduler.partition", "account": "scheduler.account", "qos": "scheduler.qos",
    "time": "scheduler.time", "cpus": "scheduler.cpus", "memory": "scheduler.memory",
    "gpus": "scheduler.gpus", "cluster": "scheduler.cluster",
    "constraint": "scheduler.constraint", "reservation": "scheduler.reservation",
    "runtime": "runtime.kind", "image": "runtime.image", "interface": "desktop.interface",
    "encoder": "desktop.encoder",
}


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = overrides_from_sets(args.set)
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out[key] = value
    if args.resolution:
        out["desktop.width"], out["desktop.height"] = parse_resolution(args.resolution)
    return out


def build_request(loaded: LoadedConfig, session_id: str) -> DesktopRequest:
    c = loaded.config
    return DesktopRequest(session_id=session_id, user=getpass.getuser(), cpus=c.scheduler.cpus,
                          gpus=c.scheduler.gpus, start_timeout=c.timeouts.start,
                          desktop=c.desktop, runtime=c.runtime, network=c.network)


def prepare(loaded: LoadedConfig) -> Session:
    """A session directory holding request.json, job.sh and session.json (nothing submitted)."""
    root = root_of(loaded)
    try:
        session = create(root)
    except OSError as exc:
        raise UsageError(f"cannot create a session directory under {root}: {exc.strerror}",
                         hint="set session_root to a writable directory the nodes share") from None
    try:
        request = build_request(loaded, session.id)
        script = jobscript.render(loaded.config, session.id, session.dir)
    except BaseException:
        shutil.rmtree(session.dir, ignore_errors=True)
        raise
    atomic_write(session.path("request.json"), request.to_json() + "\n", mode=0o644)
    atomic_write(session.path("job.sh"), script, mode=0o700)
    write_json(session.path("session.json"), {
        "id": session.id, "created": now(), "site": loaded.config.name,
        "site_file": str(loaded.site_path) if loaded.site_path else None,
        "cluster": loaded.config.scheduler.cluster, "job_id": None,
    })
    return session


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args, cli_overrides(args))
    session = prepare(loaded)
    quiet = args.json
    cfg = loaded.config
    listener = None
    if cfg.network.push and not args.no_wait:
        listener = Listener(session.dir, session.id, cfg.network.login_address)
    scheduler = scheduler_for(loaded)
    t0 = time.monotonic()
    try:
        job = scheduler.submit(session.path("job.sh"), cfg.scheduler.cluster)
    except BaseException:
        if listener:
            listener.close()
        shutil.rmtree(session.dir, ignore_errors=True)  # nothing was submitted: nothing to keep
        raise
    session.update_meta(job_id=job.job_id, cluster=job.cluster, submitted=now())
    where = f" to partition {cfg.scheduler.partition}" if cfg.scheduler.partition else ""
    say(f"hpcdesk: session {session.id}, job {job}{where} submitted", quiet)
    if args.no_wait:
        if quiet:
            emit_json({"session": session.id, "job_id": job.job_id, "cluster": job.cluster,
                       "state": "submitted", "directory": str(session.dir)})
        else:
            say(f"  follow it:  hpcdesk status {session.id} --wait")
        return EXIT_OK
    return wait_and_report(session, scheduler, job, loaded, listener, quiet, t0)


def wait_and_report(session: Session, scheduler: Scheduler, job: JobRef, loaded: LoadedConfig,
                    listener: Listener | None, quiet: bool, t0: float) -> int:
    def show(stage: str, detail: str) -> None:
        say(f"  [{time.monotonic() - t0:6.1f}s] {detail}", quiet)

    waiter = Waiter(session, scheduler, job, loaded.config.timeouts, Progress(show), listener)
    try:
        conn = waiter.wait()
    except KeyboardInterrupt:
        print(f"\nhpcdesk: stopped waiting; job {job} keeps running.\n"
              f"  reattach: hpcdesk status {session.id} --wait\n"
              f"  stop it:  hpcdesk cancel {session.id}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DesktopFailed, WaitTimeout) as exc:
        report_failure(session, scheduler, job, exc)
        return exc.exit_code if isinstance(exc, WaitTimeout) else EXIT_FAILED
    finally:
        if listener:
            listener.close()
    elapsed = time.monotonic() - t0
    session.update_meta(ready_at=now(), ready_after_s=round(elapsed, 3))
    print_connection(session, job, conn, quiet, elapsed)
    return EXIT_OK


def print_connection(session: Session, job: JobRef, conn: dict[str, Any], quiet: bool,
                     elapsed: float | None = None) -> None:
    if quiet:
        emit_json({"session": session.id, "job_id": job.job_id, "cluster": job.cluster,
                   "state": "ready", **{k: conn.get(k) for k in (
                       "url", "host", "port", "user", "password", "node", "display",
                       "encoder", "encoder_reason", "interface", "tls", "tls_fingerprint")}})
        return
    took = f" after {elapsed:.1f}s" if elapsed is not None else ""
    print(f"\nYour desktop is ready{took}:\n"
          f"  URL:      {conn['url']}\n"
          f"  user:     {conn['user']}\n"
          f"  password: {conn['password']}\n"
          f"  node:     {conn.get('node')} (display {conn.get('display')}, "
          f"encoder {conn.get('encoder')})\n"
          f"  session:  {session.id} (job {job})\n"
          + (f"  certificate: self-signed for this session; your browser warns once.\n"
             f"           SHA-256 {conn.get('tls_fingerprint')}\n"
             if conn.get("tls") == "self-signed" else "") +
          f"  stop it:  hpcdesk cancel {session.id}", flush=True)


def report_failure(session: Session, scheduler: Scheduler, job: JobRef, exc: Exception) -> None:
    """Say what happened, cancel what is left, keep the session directory."""
    info = scheduler.query([job]).get(job)
    if info is None or info.state.active or not info.state.finished:
        scheduler.cancel(job)
        cancelled = True
    else:
        cancelled = False
    exit_code = info.exit_code if info and info.exit_code else ""
    if not exit_code and hasattr(scheduler, "exit_code"):
        exit_code = scheduler.exit_code(job)
    state = info.state.value if info else "unknown"
    lines = [f"hpcdesk: error: {exc}",
             f"  Slurm state: {state}" + (f", exit code {exit_code}" if exit_code else "")]
    if cancelled:
        lines.append(f"  job {job} was cancelled")
    for name in ("agent.log", "job.out"):
        text = tail(session.path(name), 12)
        if text:
            lines.append(f"  last lines of {name}:\n" + "\n".join("    " + ln for ln in
                                                                  text.splitlines()))
    lines.append(f"  everything is kept in {session.dir} (job.sh, logs, node.json)")
    hint = getattr(exc, "hint", "")
    if hint:
        lines.append(f"  hint: {hint}")
    print("\n".join(lines), file=sys.stderr)
    session.update_meta(final={"state": "failed", "detail": str(exc).split("\n")[0],
                               "exit_code": exit_code, "at": now()})


