"""`hpcdesk share SESSION`: a link for someone else to watch (or, where the site allows,
control) a running desktop; `--list` and `--revoke ID`.

The link is the owner's route with the share's own token in its fragment. The node agent
provisions the token within a second or two and answers in shares.state.json; this command
waits for that answer, so a printed link works at once and a revoked one is dead on return.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from datetime import datetime, timezone
from typing import Any

from hpcdesk import shares
from hpcdesk.commands.common import emit_json, load_config, root_of
from hpcdesk.connection import Connection
from hpcdesk.errors import EXIT_OK, HpcdeskError, UsageError, WaitTimeout
from hpcdesk.request import DesktopRequest
from hpcdesk.schema import slurm_time_seconds
from hpcdesk.session import Session, find

ANSWER_TIMEOUT = 20.0  # the agent looks at shares.json every second


def run(args: argparse.Namespace) -> int:
    loaded = load_config(args)
    session = find(root_of(loaded), args.session)
    if args.list:
        return _list(session, args.json)
    if args.revoke:
        return _revoke(session, args.revoke, args.json)
    return _create(session, "controller" if args.control else "viewer", args.expires, args.json)


def _ready_connection(session: Session) -> Connection:
    conn = session.connection()
    if not conn or session.meta.get("final"):
        raise UsageError(f"session {session.id} has no running desktop to share",
                         hint="`hpcdesk status` shows its state")
    if not conn.token:
        raise UsageError(f"session {session.id} uses a password (desktop.auth: basic); shares "
                         "need token links", hint="start the desktop with --set "
                         "desktop.auth=token (the default with the host runtime)")
    return conn


def _create(session: Session, role: shares.Role, expires: str | None, as_json: bool) -> int:
    conn = _ready_connection(session)
    request = DesktopRequest.load(session.path("request.json"))
    policy, tunnelled = request.policy, request.network.connect == "tunnel"
    why = shares.refusal(policy, role)
    if why:
        raise UsageError(why)
    cap = slurm_time_seconds(policy.share_max)
    try:
        lifetime = shares.parse_duration(expires) if expires else cap
    except ValueError as exc:
        raise UsageError(f"--expires: {exc}") from None
    capped = lifetime > cap
    share = shares.add(session.dir, role, min(lifetime, cap))
    state = _await(session, lambda st: share.id in st.get("live", [])
                   or share.id in st.get("refused", {}))
    if share.id not in state.get("live", []):
        reason = state.get("refused", {}).get(share.id, "")
        raise HpcdeskError(f"the desktop refused the share: {reason}")
    link = dataclasses.replace(conn, token=share.token).browser_link()
    if as_json:
        emit_json({"session": session.id, **share.public(), "url": link, "capped": capped})
        return EXIT_OK
    what = "watch (no keyboard, mouse, clipboard or files)" if role == "viewer" else "control"
    print(f"Share {share.id} of session {session.id}: anyone with this link can {what} "
          f"the desktop until {_when(share.expires)}"
          + (f" (the site's longest, policy.share_max {policy.share_max})" if capped else "")
          + f":\n  {link}\n"
          + ("  (the node's address, for the cluster's network; through `hpcdesk tunnel` "
             "the same link with the tunnel's 127.0.0.1:PORT)\n" if tunnelled else "")
          + f"  revoke it: hpcdesk share {session.id} --revoke {share.id}", flush=True)
    return EXIT_OK


def _revoke(session: Session, share_id: str, as_json: bool) -> int:
    share = shares.revoke(session.dir, share_id)
    if share is None:
        raise UsageError(f"session {session.id} has no live share {share_id!r}",
                         hint=f"`hpcdesk share {session.id} --list` shows them")
    if session.connection() and not session.meta.get("final"):
        _await(session, lambda st: share_id not in st.get("live", []))
    if as_json:
        emit_json({"session": session.id, **share.public()})
    else:
        print(f"share {share_id} of session {session.id} revoked: its viewers are "
              "disconnected and the link no longer works")
    return EXIT_OK


def _list(session: Session, as_json: bool) -> int:
    state = shares.read_state(session.dir)
    rows = []
    for share in shares.load(session.dir):
        status = ("live" if share.id in state.get("live", []) else
                  state.get("refused", {}).get(share.id) or
                  ("revoked" if share.revoked else "waiting for the desktop"))
        rows.append({**share.public(), "state": status})
    if as_json:
        emit_json({"session": session.id, "shares": rows})
        return EXIT_OK
    if not rows:
        print(f"session {session.id} has no shares")
        return EXIT_OK
    print(f"{'ID':<10} {'ROLE':<11} {'EXPIRES':<20} STATE")
    for r in rows:
        print(f"{r['id']:<10} {r['role']:<11} {_when(r['expires']):<20} {r['state']}")
    return EXIT_OK


def _await(session: Session, done: Any) -> dict[str, Any]:
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:
        state = shares.read_state(session.dir)
        if done(state):
            return state
        if time.monotonic() > deadline:
            raise WaitTimeout(f"the desktop of session {session.id} did not take up the "
                              f"change within {ANSWER_TIMEOUT:.0f}s",
                              hint=f"`hpcdesk status {session.id}`; `hpcdesk logs "
                                   f"{session.id}` shows the agent's log")
        time.sleep(0.2)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
