"""`hpcdesk submit`: render the job, submit it, wait (push, files, scheduler), print the URL."""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from hpcdesk.commands.common import (
    emit_json,
    load_config,
    overrides_from_sets,
    say,
    scheduler_for,
)
from hpcdesk.commands.outcome import wait_and_report
from hpcdesk.config import LoadedConfig, parse_resolution
from hpcdesk.errors import EXIT_OK, SchedulerRejected, SubmitUncertain
from hpcdesk.login.prepare import prepare
from hpcdesk.notify import Listener
from hpcdesk.scheduler import Scheduler
from hpcdesk.session import discard, now


def cli_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set KEY=VALUE, then the options that name a setting (cli.py: their dest is the key)."""
    out = overrides_from_sets(args.set)
    out.update({key: value for key, value in vars(args).items()
                if "." in key and value is not None})
    if args.resolution:
        out["desktop.width"], out["desktop.height"] = parse_resolution(args.resolution)
    return out


def check_partition_limits(loaded: LoadedConfig, scheduler: Scheduler) -> None:
    """The scheduler's partitions (one call): refuse a request no partition it names can ever
    run (time limit above MaxTime, partition down). Unknown answers are left to sbatch."""
    from hpcdesk.scheduler import unstartable

    s = loaded.config.scheduler
    partitions = scheduler.partitions(s.cluster)
    if not partitions:
        return
    problem = unstartable.check_request(partitions, s.partition, s.time)
    if problem:
        raise SchedulerRejected(f"Slurm could never start this job: {problem[0]}; nothing "
                                "was submitted", hint=problem[1])


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args, cli_overrides(args))
    scheduler = scheduler_for(loaded)  # a backend that cannot serve fails before any file
    check_partition_limits(loaded, scheduler)  # a job that could never start is not submitted
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
        if not quiet:  # --json carries it as laptop_command (`tunnel --submit` has its own)
            say(f"  on your laptop: {laptop}")
    if args.no_wait:
        if quiet:
            emit_json({"session": session.id, "job_id": job.job_id, "cluster": job.cluster,
                       "state": "submitted", "directory": str(session.dir),
                       **({"laptop_command": laptop} if laptop else {})})
        else:
            say(f"  follow it:  hpcdesk status {session.id} --wait")
        return EXIT_OK
    return wait_and_report(session, scheduler, job, loaded, listener, quiet, t0, laptop)
