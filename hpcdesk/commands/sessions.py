"""`hpcdesk status | list | cancel | logs`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcdesk import states
from hpcdesk.commands.common import emit_json, lazy_scheduler, load_config, root_of, say
from hpcdesk.errors import EXIT_FAILED, EXIT_OK, SessionNotFound, WaitTimeout
from hpcdesk.files import tail_lines
from hpcdesk.login.status import collect, describe_policy, job_ref, policy_of
from hpcdesk.phases import desktop_state
from hpcdesk.session import Session, all_sessions, find, now

if TYPE_CHECKING:
    import argparse  # the commands get quick_args' namespace too (cli.py): same attributes

    from hpcdesk.config import LoadedConfig
    from hpcdesk.scheduler import JobRef, Scheduler

LOG_FILES = ("job.out", "agent.log", "xorg.out", "Xorg.log", "desktop.log", "selkies.log",
             "container.log", "sound.log")


def _pick(args: argparse.Namespace) -> tuple[Session, LoadedConfig]:
    loaded = load_config(args)
    root = root_of(loaded)
    key = getattr(args, "session", None)
    if key:
        return find(root, key), loaded
    sessions = all_sessions(root)
    if not sessions:
        raise SessionNotFound(f"you have no sessions under {root}",
                              hint="start one with `hpcdesk submit`")
    return sessions[-1], loaded


def status(args: argparse.Namespace) -> int:
    # The waiter, the connection and the policy's modules are imported where they are used,
    # not at the top: `list` needs none of them (they are a good part of its cold start).
    session, loaded = _pick(args)
    scheduler = lazy_scheduler(loaded)
    ref = job_ref(session)
    if args.wait and ref and not session.meta.get("final"):
        st = collect([session], scheduler)[0]
        if st.state in states.WAITING and st.state != states.SUBMITTING:
            from hpcdesk.commands.outcome import wait_and_report

            return wait_and_report(session, scheduler(), ref, loaded, None, args.json,
                                   time.monotonic())
    st = collect([session], scheduler)[0]
    policy = policy_of(session)
    if args.json:
        emit_json({**st.as_json(with_secrets=True), "policy": policy})
        return EXIT_OK
    conn = session.connection() if st.state == states.READY else None
    if conn and ref:
        if st.node.get("sound"):  # the agent's latest word (a sound server can stop)
            import dataclasses

            conn = dataclasses.replace(conn, sound=st.node["sound"])
        from hpcdesk.commands.outcome import print_connection

        print_connection(session, ref, conn, quiet=False)
    else:
        node = st.as_json()["node"]
        print(f"session {session.id}: {st.state}" + (f" ({st.detail})" if st.detail else ""))
        print(f"  job {ref or '-'}" + (f" on {node}" if node else "")
              + f"; files in {session.dir}")
    if policy:
        print(f"  policy:   {describe_policy(policy)}")
    live = _live_shares(session) if conn else []
    if live:
        print(f"  shares:   {len(live)} live (hpcdesk share {session.id} --list)")
    if conn and ref:
        return EXIT_OK
    if isinstance(st.node.get("sound"), dict) and not (conn and ref):
        print(f"  sound: {st.node['sound'].get('reason')}")
    return EXIT_OK if st.state != states.FAILED else EXIT_FAILED


def _live_shares(session: Session) -> list[Any]:
    from hpcdesk import shares

    live: list[Any] = shares.read_state(session.dir).get("live", [])
    return live


def list_sessions(args: argparse.Namespace) -> int:
    loaded = load_config(args)
    # Newest first: the desktop just submitted is the one people look for.
    sessions = all_sessions(root_of(loaded), include_ended=args.all)[::-1]
    if not args.all:
        sessions = [s for s in sessions if not s.meta.get("final")]
    rows = collect(sessions, lazy_scheduler(loaded))
    if not args.all:
        rows = [r for r in rows if not r.session.meta.get("final")]
    if args.json:
        emit_json([r.as_json() for r in rows])
        return EXIT_OK
    if not rows:
        print("no active sessions" + ("" if args.all else " (use --all to see ended ones)"))
        return EXIT_OK
    print(f"{'SESSION':<8} {'JOB':<10} {'STATE':<10} {'NODE':<12} {'AGE':>6}  URL / DETAIL")
    for r in rows:
        j = r.as_json()
        age = _age(now() - float(r.session.meta.get("created", now())))
        print(f"{r.session.id:<8} {j['job_id'] or '-':<10} {r.state:<10} {j['node'] or '-':<12} "
              f"{age:>6}  {_where(j, r.session.id) or r.detail}")
    return EXIT_OK


def _where(row: dict[str, Any], sid: str) -> str:
    """The address column: a token desktop's address alone opens nothing, so it says where
    the whole link is (no secrets in a listing)."""
    url = str(row.get("url") or "")
    if url and row.get("auth") == "token":
        return f"{url} (link: hpcdesk status {sid})"
    return url


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def cancel(args: argparse.Namespace) -> int:
    session, loaded = _pick(args)
    scheduler = lazy_scheduler(loaded)
    ref = job_ref(session)
    if ref is None:
        raise SessionNotFound(f"session {session.id} has no job to cancel")
    if session.meta.get("final"):
        st = collect([session], scheduler)[0]
        say(f"hpcdesk: session {session.id} has already ended ({st.state})", args.json)
        if args.json:
            emit_json(st.as_json())
        return EXIT_OK
    session.update_meta(cancel_requested=now())
    scheduler().cancel(ref)
    say(f"hpcdesk: cancelling job {ref} (session {session.id})", args.json)
    if not args.no_wait:
        node = _wait_agent_stopped(session, scheduler(), ref, timeout=60.0)
        detail = node.get("reason") or "cancelled before the desktop started"
        session.update_meta(final={"state": states.CANCELLED, "detail": detail, "at": now()})
    st = collect([session], scheduler)[0]
    if args.json:
        emit_json(st.as_json())
    else:
        print(f"session {session.id}: {st.state}")
    return EXIT_OK


def _wait_agent_stopped(session: Session, scheduler: Scheduler, ref: JobRef,
                        timeout: float) -> dict[str, object]:
    """Wait on the session files until the node agent has cleaned up; ask Slurm only every
    few seconds, in case the node (and its agent) vanished without a word."""
    node = session.node_state()
    if not node:
        return node  # the job never started: scancel alone ends it
    start = time.monotonic()
    deadline, next_ask = start + timeout, start + 5.0
    delay = 0.1
    while not desktop_state(node).ended:
        if time.monotonic() > next_ask:
            next_ask = time.monotonic() + 5.0
            info = scheduler.query([ref]).get(ref)
            if info and info.state.finished:
                return {**node, "reason": f"job ended ({info.state.value}) without a word "
                        "from the node agent"}
        if time.monotonic() > deadline:
            raise WaitTimeout(f"the desktop of session {session.id} has not stopped {timeout:.0f}s "
                              "after scancel", hint=f"see `hpcdesk logs {session.id}`")
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)
        node = session.node_state()
    return node


def logs(args: argparse.Namespace) -> int:
    session, _ = _pick(args)
    shown = 0
    paths = [session.path(name) for name in LOG_FILES]
    # An Open OnDemand session: the batch job's own output (before.sh, after.sh, create_yml)
    # is OOD's output.log in the dashboard's work directory.
    ood_dir = session.meta.get("ood_work_dir")
    if ood_dir:
        paths.insert(0, Path(str(ood_dir)) / "output.log")
    for path in paths:
        if path.exists():
            print(f"==> {path} <==")
            print(tail_lines(path, args.lines))
            shown += 1
    if not shown:
        print(f"no logs yet in {session.dir}")
    return EXIT_OK


