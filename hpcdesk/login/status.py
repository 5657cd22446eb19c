"""What a session is doing now, from its cached final state, Slurm and the agent's node.json
(read through phases.desktop_state)."""

# No `from __future__ import annotations` here: with it, typing.NamedTuple compiles each
# field's annotation string at every start of `hpcdesk list` (issue 23).
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from hpcdesk import states
from hpcdesk.files import read_json
from hpcdesk.phases import FAILED, desktop_state
from hpcdesk.scheduler import JobInfo, JobRef, JobState, Scheduler
from hpcdesk.session import Session, now


class SessionStatus(NamedTuple):
    """What one session is doing now (a NamedTuple, as the scheduler's types: see there)."""

    session: Session
    state: str          # queued | starting | ready | cancelled | failed | completed | ...
    detail: str
    job: JobInfo | None
    node: dict[str, Any]

    def as_json(self, with_secrets: bool = False) -> dict[str, Any]:
        meta = self.session.meta
        out: dict[str, Any] = {
            "session": self.session.id, "job_id": meta.get("job_id"),
            "cluster": meta.get("cluster"), "state": self.state, "detail": self.detail,
            "node": self.node.get("node") or (self.job.nodes if self.job else None),
            "created": meta.get("created"), "directory": str(self.session.dir),
        }
        if self.node.get("sound"):  # the agent's finding: on, or off and why
            out["sound"] = self.node["sound"]
        conn = self.session.connection() if self.state == states.READY else None
        if conn:
            out["url"] = conn.url
            out["auth"] = conn.auth  # token: the link is `url` plus its #token=...
            out["tls_fingerprint"] = conn.tls_fingerprint
            # What `hpcdesk tunnel` forwards besides the web port (see connect/rtc.py).
            out.update(transport=conn.transport, turn_port=conn.turn_port,
                       encoder=conn.encoder, encoder_reason=conn.encoder_reason,
                       encoder_fallback=conn.encoder_fallback)
            if with_secrets:
                out.update(user=conn.user, password=conn.password, url=conn.browser_link(),
                           token=conn.token)
                out["connection"] = conn.to_dict()  # typed, for `hpcdesk tunnel` (laptop)
        return out


def policy_of(session: Session) -> dict[str, Any] | None:
    """The data policy the desktop runs under, as its request recorded it at submit (every
    PolicyConfig setting). Read as JSON, without the schema, so `status` starts quickly. None
    when the request records none (a desktop started before data policies) or is unreadable."""
    request = read_json(session.path("request.json")) or {}
    policy = request.get("policy")
    return policy if isinstance(policy, dict) else None


def describe_policy(policy: Mapping[str, Any]) -> str:
    """The policy in one line for `hpcdesk status`; a setting the request did not record (a
    desktop started by an older hpcdesk) shows as "not recorded", never as a guess."""
    def get(key: str) -> Any:
        return policy.get(key, "not recorded")

    limit = policy.get("transfer_limit_mbps")
    rate = (f" (at most {limit:g} Mbit/s)" if isinstance(limit, (int, float)) and limit
            and get("file_transfers") != "none" else "")
    printing = policy.get("printing")
    printed = ("on" if printing else "off") if isinstance(printing, bool) else "not recorded"
    return (f"clipboard {get('clipboard')}, file transfers {get('file_transfers')}{rate}, "
            f"printing {printed}, sharing {get('sharing')} (at most {get('share_max')}), "
            "audit to the session's audit.jsonl"
            + (f" and {policy['audit_url']}" if policy.get("audit_url") else ""))


def job_ref(session: Session) -> JobRef | None:
    job = session.job_id
    return JobRef(job, session.meta.get("cluster")) if job else None


def collect(sessions: Sequence[Session],
            scheduler: Callable[[], Scheduler]) -> list[SessionStatus]:
    """Status of many sessions with one scheduler query for the live ones. An ended session
    is answered from its final state in session.json: no scheduler is made or asked for it,
    so `list --all` costs the same however many old sessions a user keeps."""
    live = [s for s in sessions if not s.meta.get("final") and job_ref(s)]
    infos = scheduler().query([r for s in live if (r := job_ref(s))]) if live else {}
    out = []
    for s in sessions:
        ref = job_ref(s)
        out.append(describe(s, infos.get(ref) if ref else None))
    return out


def describe(session: Session, info: JobInfo | None) -> SessionStatus:
    meta = session.meta
    node = session.node_state()
    final = meta.get("final")
    if final:
        return SessionStatus(session, final["state"], final.get("detail", ""), info, node)
    if info is None:
        state = states.SUBMITTING if not meta.get("job_id") else states.UNKNOWN
        return SessionStatus(session, state, "", None, node)
    desktop = desktop_state(node)
    if info.state is JobState.PENDING:
        detail = info.reason + (f", expected start {info.start_estimate}"
                                if info.start_estimate else "")
        return SessionStatus(session, states.QUEUED, detail, info, node)
    if info.state in (JobState.RUNNING, JobState.COMPLETING, JobState.SUSPENDED):
        # The job runs on while an agent that has ended (stopped, failed) winds it down.
        state = states.STOPPING if desktop.ended else desktop.state
        return SessionStatus(session, state, desktop.detail, info, node)
    if info.state is JobState.UNKNOWN:
        return SessionStatus(session, states.UNKNOWN, info.reason, info, node)
    # Finished: remember it, so it is never asked for again.
    state = info.state.value
    if info.state in (JobState.ENDED, JobState.COMPLETED) and desktop.state == FAILED:
        state = states.FAILED
    elif info.state is JobState.ENDED:
        state = states.CANCELLED if meta.get("cancel_requested") else states.ENDED
    detail = node.get("reason") or info.reason
    if node.get("outcome") in (states.TIMEOUT, states.IDLE):
        state = str(node["outcome"])  # the time limit's early signal, or the idle timeout
    if node and not desktop.ended and info.state is not JobState.CANCELLED:
        # The agent always records how it ended; silence means it was killed or its node died.
        how = (f"node {desktop.node} failed" if info.state is JobState.NODE_FAIL else
               f"the node agent on {desktop.node} was killed or died")
        exit_code = f", exit code {info.exit_code}" if info.exit_code else ""
        detail = (f"{how} while the desktop was {desktop.state} (Slurm: {info.state.value}"
                  f"{exit_code}); see `hpcdesk logs {session.id}`, then submit again")
        if info.state in (JobState.ENDED, JobState.COMPLETED):
            state = states.FAILED
    session.update_meta(final={"state": state, "detail": detail, "exit_code": info.exit_code,
                               "at": now()})
    return SessionStatus(session, state, detail, info, node)
