"""The outcome of a submitted desktop: wait for it, then print its URL and credentials, or say
what failed and keep everything (used by `submit` and `status --wait`)."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from hpcdesk import states
from hpcdesk.commands.common import emit_json, say
from hpcdesk.config import LoadedConfig
from hpcdesk.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, WaitTimeout
from hpcdesk.files import tail_lines
from hpcdesk.login.waiting import DesktopFailed, JobCannotStart, Progress, Waiter
from hpcdesk.scheduler import JobRef, Scheduler
from hpcdesk.session import Session, now

if TYPE_CHECKING:  # the push channel is needed only while submitting
    from hpcdesk.connection import Connection
    from hpcdesk.notify import Listener


def wait_and_report(session: Session, scheduler: Scheduler, job: JobRef, loaded: LoadedConfig,
                    listener: Listener | None, quiet: bool, t0: float,
                    laptop: str | None = None) -> int:
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
        if session.reload().get("cancel_requested"):
            report_cancelled(session, job, quiet)  # `hpcdesk cancel`, from another shell
            return EXIT_FAILED
        keep = (isinstance(exc, JobCannotStart)
                and loaded.config.scheduler.unstartable == "keep")
        report_failure(session, scheduler, job, exc, keep=keep)
        return exc.exit_code if isinstance(exc, WaitTimeout) else EXIT_FAILED
    finally:
        if listener:
            listener.close()
    elapsed = time.monotonic() - t0
    session.update_meta(ready_at=now(), ready_after_s=round(elapsed, 3))
    print_connection(session, job, conn, quiet, elapsed, laptop)
    return EXIT_OK


def print_connection(session: Session, job: JobRef, conn: Connection, quiet: bool,
                     elapsed: float | None = None, laptop: str | None = None) -> None:
    """`laptop`: the `hpcdesk tunnel` command for sessions reached through a tunnel."""
    if quiet:
        emit_json({"session": session.id, "job_id": job.job_id, "cluster": job.cluster,
                   "state": states.READY, **{k: getattr(conn, k) for k in (
                       "host", "port", "user", "password", "token", "node", "display",
                       "encoder", "encoder_reason", "encoder_fallback", "interface", "tls",
                       "tls_fingerprint", "transport", "turn_port", "sound")},
                   "url": conn.browser_link(),
                   **({"laptop_command": laptop} if laptop else {})})
        return
    took = f" after {elapsed:.1f}s" if elapsed is not None else ""
    print(f"\nYour desktop is ready{took}:\n"
          f"  URL:      {conn.browser_link()}\n" +
          ("  (the token after # is your key: share the link with no one)\n"
           if conn.token else
           f"  user:     {conn.user}\n  password: {conn.password}\n") +
          f"  node:     {conn.node} (display {conn.display}, encoder {conn.encoder})\n"
          + (f"  note:     {conn.encoder_reason}\n" if conn.encoder_fallback else "")
          + sound_line(conn) +
          f"  session:  {session.id} (job {job})\n"
          + (f"  certificate: self-signed for this session; your browser warns once.\n"
             f"           SHA-256 {conn.tls_fingerprint}\n"
             if conn.tls == "self-signed" else "") +
          (f"  on your laptop (this URL is for the cluster's network only):\n"
           f"            {laptop}\n" if laptop else "") +
          f"  stop it:  hpcdesk cancel {session.id}", flush=True)


def report_cancelled(session: Session, job: JobRef, quiet: bool) -> None:
    """The user cancelled the job while this command waited: not a failure of the desktop."""
    node = session.node_state()
    detail = str(node.get("reason") or "cancelled before the desktop started")
    say(f"hpcdesk: session {session.id} was cancelled (job {job}) before the desktop was "
        "ready", quiet)
    if quiet:
        emit_json({"session": session.id, "job_id": job.job_id, "cluster": job.cluster,
                   "state": states.CANCELLED, "detail": detail})
    if not session.meta.get("final"):
        session.update_meta(final={"state": states.CANCELLED, "detail": detail, "at": now()})


def sound_line(conn: Connection) -> str:
    """What the desktop's sound is, or why it is off (node/sound.py); never a silent "on"."""
    if not isinstance(conn.sound, dict):
        return ""
    return f"  sound:    {conn.sound.get('reason')}\n"


def report_failure(session: Session, scheduler: Scheduler, job: JobRef, exc: Exception,
                   keep: bool = False) -> None:
    """Say what happened, cancel what is left (unless `keep`), keep the session directory."""
    info = scheduler.query([job]).get(job)
    if keep:
        cancelled = False
    elif info is None or not info.state.finished:
        scheduler.cancel(job)
        cancelled = True
    else:
        cancelled = False
    exit_code = info.exit_code if info and info.exit_code else ""
    if not exit_code:
        exit_code = scheduler.exit_code(job)
    state = info.state.value if info else "unknown"
    lines = [f"hpcdesk: error: {exc}",
             f"  Slurm state: {state}" + (f", exit code {exit_code}" if exit_code else "")]
    if cancelled:
        lines.append(f"  job {job} was cancelled")
    elif keep:
        lines.append(f"  job {job} is kept in the queue (scheduler.unstartable: keep); "
                     f"stop it: hpcdesk cancel {session.id}")
    for name in ("agent.log", "job.out"):
        text = tail_lines(session.path(name), 12)
        if text:
            lines.append(f"  last lines of {name}:\n" + "\n".join("    " + ln for ln in
                                                                  text.splitlines()))
    lines.append(f"  everything is kept in {session.dir} (job.sh, logs, node.json)")
    hint = getattr(exc, "hint", "")
    if hint:
        lines.append(f"  hint: {hint}")
    print("\n".join(lines), file=sys.stderr)
    if keep:
        return  # still queued: `list` and `status` keep following it
    session.update_meta(final={"state": states.FAILED, "detail": str(exc).split("\n")[0],
                               "exit_code": exit_code, "at": now()})


