"""`hpcdesk submit`: render the job, submit it, wait (push, files, scheduler), print the URL."""

from __future__ import annotations

import argparse
import getpass
import os
import time
from typing import Any

from hpcdesk.commands.common import (
    emit_json,
    load_config,
    overrides_from_sets,
    root_of,
    say,
    scheduler_for,
)
from hpcdesk.commands.outcome import wait_and_report
from hpcdesk.config import LoadedConfig, parse_resolution
from hpcdesk.connect.turn import check_files, configured
from hpcdesk.errors import EXIT_OK, SchedulerRejected, SubmitUncertain, UsageError
from hpcdesk.files import atomic_write, write_json
from hpcdesk.notify import Listener
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import slurm_time_seconds
from hpcdesk.session import Session, create, discard, now


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set KEY=VALUE, then the options that name a setting (cli.py: their dest is the key)."""
    out = overrides_from_sets(args.set)
    out.update({key: value for key, value in vars(args).items()
                if "." in key and value is not None})
    if args.resolution:
        out["desktop.width"], out["desktop.height"] = parse_resolution(args.resolution)
    return out


def build_request(loaded: LoadedConfig, session_id: str) -> DesktopRequest:
    c = loaded.config
    return DesktopRequest(session_id=session_id, user=getpass.getuser(), cpus=c.scheduler.cpus,
                          gpus=c.scheduler.gpus, start_timeout=c.timeouts.start,
                          desktop=c.desktop, runtime=c.runtime, network=c.network, turn=c.turn,
                          time_limit=slurm_time_seconds(c.scheduler.time),
                          warn_before=c.timeouts.warn_before, idle_timeout=c.timeouts.idle,
                          policy=c.policy)


def check_partition_limits(loaded: LoadedConfig) -> None:
    """One `scontrol show partition`: refuse a request no partition it names can ever run
    (time limit above MaxTime, partition down). Unknown answers are left to sbatch."""
    from hpcdesk.scheduler import unstartable
    from hpcdesk.scheduler.slurm_cli import slurm_env

    s = loaded.config.scheduler
    partitions = unstartable.show_partitions(slurm_env(), s.cluster)
    if not partitions:
        return
    problem = unstartable.check_request(partitions, s.partition, s.time)
    if problem:
        raise SchedulerRejected(f"Slurm could never start this job: {problem[0]}; nothing "
                                "was submitted", hint=problem[1])


def prepare(loaded: LoadedConfig) -> Session:
    """A session directory holding request.json, job.sh and session.json (nothing submitted)."""
    if configured(loaded.config.turn):
        # A bad secret or credential file is a configuration error: nothing is submitted.
        check_files(loaded.config.turn, loaded.sources)
    root = root_of(loaded)
    try:
        session = create(root)
    except OSError as exc:
        raise UsageError(f"cannot create a session directory under {root}: {exc.strerror}",
                         hint="set session_root to a writable directory the nodes share") from None

    from hpcdesk.login import jobscript  # jinja2 is needed to submit only, not to list or watch

    try:
        request = build_request(loaded, session.id)
        script = jobscript.render(loaded.config, session.id, session.dir)
    except BaseException:
        discard(session)
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
    scheduler = scheduler_for(loaded)  # a backend that cannot serve fails before any file
    check_partition_limits(loaded)      # a job that could never start is not submitted
    session = prepare(loaded)
    quiet = args.json
    cfg = loaded.config
    listener = None
    if cfg.network.push and not args.no_wait:
        listener = Listener(session.dir, session.id, cfg.network.login_address)
    t0 = time.monotonic()
    try:
        job = scheduler.submit(session.path("job.sh"), cfg.scheduler.cluster)
    except SubmitUncertain as exc:
        if listener:
            listener.close()
        # The job may be queued: its script runs from this directory, so it stays.
        session.update_meta(final={"state": "unknown", "detail": exc.message, "at": now()})
        raise
    except BaseException:
        if listener:
            listener.close()
        discard(session)  # nothing was submitted: nothing to keep
        raise
    session.update_meta(job_id=job.job_id, cluster=job.cluster, submitted=now())
    where = f" to partition {cfg.scheduler.partition}" if cfg.scheduler.partition else ""
    say(f"hpcdesk: session {session.id}, job {job}{where} submitted", quiet)
    laptop = None
    if cfg.network.connect == "tunnel":
        from hpcdesk.commands.laptop_hint import laptop_command

        laptop = laptop_command(session.id, args.site or os.environ.get("HPCDESK_SITE"))
        say(f"  on your laptop: {laptop}", quiet)
    if args.no_wait:
        if quiet:
            emit_json({"session": session.id, "job_id": job.job_id, "cluster": job.cluster,
                       "state": "submitted", "directory": str(session.dir),
                       **({"laptop_command": laptop} if laptop else {})})
        else:
            say(f"  follow it:  hpcdesk status {session.id} --wait")
        return EXIT_OK
    return wait_and_report(session, scheduler, job, loaded, listener, quiet, t0, laptop)
