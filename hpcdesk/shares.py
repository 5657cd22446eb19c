"""Share links of a desktop: `shares.json` (0600) in the session directory, both sides' view.

`hpcdesk share` (login side) adds and revokes entries; the node agent reads the file, keeps
the site's limits (policy.sharing, policy.share_max), provisions the live ones into Selkies'
token table and answers in `shares.state.json`: which ids are live and which it refused.
A share's token is a secret like the owner's: it lives in these 0600 files and in the link's
fragment, nowhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from hpcdesk.files import read_json, write_json
from hpcdesk.schema import PolicyConfig, slurm_time_seconds

SHARES_FILE = "shares.json"
STATE_FILE = "shares.state.json"
LOCK_FILE = "shares.lock"

Role = Literal["viewer", "controller"]


@dataclass
class Share:
    id: str
    token: str
    role: Role
    created: float
    expires: float
    revoked: float | None = None

    def live_at(self, now: float) -> bool:
        return self.revoked is None and now < self.expires

    def public(self) -> dict[str, Any]:
        """Everything but the token (for --list and --json listings)."""
        out = asdict(self)
        del out["token"]
        return out


_DURATION = re.compile(r"(\d+)\s*([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in '90m', '2h', '1d', '45s', '1h30m' or a Slurm time ('2:00:00', '90' minutes).
    ValueError says what is accepted."""
    t = text.strip().lower()
    if t and _DURATION.sub("", t).strip() == "" and _DURATION.search(t):
        secs = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(t))
    else:
        try:
            secs = slurm_time_seconds(t)
        except ValueError:
            raise ValueError(f"{text!r} is not a duration: use for example 30m, 2h, 1d or "
                             "2:00:00") from None
    if secs <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return secs


def refusal(policy: PolicyConfig, role: Role) -> str | None:
    """Why the site does not allow a share of `role`, or None."""
    if policy.sharing == "off":
        return "this site does not allow sharing desktops (policy.sharing: off)"
    if role == "controller" and policy.sharing != "control":
        return ("this site allows view-only shares only (policy.sharing: view-only); "
                "drop --control")
    return None


def load(session_dir: Path) -> list[Share]:
    data = read_json(session_dir / SHARES_FILE) or {}
    out = []
    for item in data.get("shares", []):
        with contextlib.suppress(TypeError, KeyError, ValueError):
            out.append(Share(id=str(item["id"]), token=str(item["token"]),
                             role="controller" if item["role"] == "controller" else "viewer",
                             created=float(item["created"]), expires=float(item["expires"]),
                             revoked=None if item.get("revoked") is None
                             else float(item["revoked"])))
    return out


def _save(session_dir: Path, shares: list[Share]) -> None:
    write_json(session_dir / SHARES_FILE, {"shares": [asdict(s) for s in shares]}, mode=0o600)


@contextlib.contextmanager
def _locked(session_dir: Path) -> Iterator[list[Share]]:
    """The shares, for a read-modify-write under the session's share lock."""
    fd = os.open(session_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        shares = load(session_dir)
        yield shares
        _save(session_dir, shares)
    finally:
        os.close(fd)


def add(session_dir: Path, role: Role, lifetime: int, now: float | None = None) -> Share:
    now = time.time() if now is None else now
    share = Share(id=secrets.token_hex(4), token=secrets.token_urlsafe(24), role=role,
                  created=round(now, 3), expires=round(now + lifetime, 3))
    with _locked(session_dir) as shares:
        shares.append(share)
    return share


def revoke(session_dir: Path, share_id: str, now: float | None = None) -> Share | None:
    with _locked(session_dir) as shares:
        for share in shares:
            if share.id == share_id and share.revoked is None:
                share.revoked = round(time.time() if now is None else now, 3)
                return share
    return None


def granted(shares: list[Share], policy: PolicyConfig, now: float
            ) -> tuple[list[Share], dict[str, str]]:
    """The shares the desktop serves now, and why the others are not served (by id).
    The site's limits apply here, on the node: a share file the user edited by hand cannot
    widen them."""
    cap = slurm_time_seconds(policy.share_max)
    live: list[Share] = []
    refused: dict[str, str] = {}
    for share in shares:
        why = refusal(policy, share.role)
        if why:
            refused[share.id] = why
        elif share.revoked is not None:
            refused[share.id] = "revoked"
        elif now >= min(share.expires, share.created + cap):
            refused[share.id] = "expired"
        else:
            live.append(share)
    return live, refused


def next_expiry(shares: list[Share], policy: PolicyConfig, now: float) -> float | None:
    """When the next share that is live at `now` reaches its end (None: none will)."""
    cap = slurm_time_seconds(policy.share_max)
    ends = [end for s in shares if s.revoked is None
            if (end := min(s.expires, s.created + cap)) > now]
    return min(ends) if ends else None


def read_state(session_dir: Path) -> dict[str, Any]:
    return read_json(session_dir / STATE_FILE) or {}


def write_state(session_dir: Path, live: list[Share], refused: dict[str, str],
                now: float) -> None:
    write_json(session_dir / STATE_FILE, {"live": [s.id for s in live], "refused": refused,
                                          "updated": round(now, 3)}, mode=0o600)
