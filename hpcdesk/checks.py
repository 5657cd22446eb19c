"""One result type for `hpcdesk doctor` (login side) and `hpcdesk doctor --node` (GPU node).

Shared by both sides, so it imports nothing from either.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["STATUSES", "Check", "Status", "checks_to_json", "worst"]

Status = Literal["ok", "warn", "fail", "skip"]

# From harmless to serious; worst() returns the most serious status present.
STATUSES: tuple[Status, ...] = ("skip", "ok", "warn", "fail")


@dataclass(frozen=True)
class Check:
    """One finding: what was checked, how it went, what was seen, and what to do about it.

    Every non-ok check should carry a ``fix``: the sentence a user or admin acts on.
    """

    name: str
    status: Status
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown check status {self.status!r} (one of {STATUSES})")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def worst(checks: Iterable[Check]) -> Status:
    """The most serious status among ``checks``: fail > warn > ok > skip; "ok" when empty."""
    ranks = [STATUSES.index(check.status) for check in checks]
    return STATUSES[max(ranks)] if ranks else "ok"


def checks_to_json(checks: Iterable[Check]) -> list[dict[str, str]]:
    """JSON-ready list of ``{"name", "status", "detail", "fix"}`` objects, in order."""
    return [check.as_dict() for check in checks]
