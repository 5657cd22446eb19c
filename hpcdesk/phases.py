"""The node agent's phases and the one place that says what a phase means for a session.

The agent records its phase in node.json and pushes it to the waiting client:
``starting -> launching -> waiting -> ready``, and at the end ``stopping -> stopped`` (it was
asked to stop) or ``stopping -> failed``. :func:`desktop_state` turns such a record (node.json,
or a pushed event, which carries the same fields) into the desktop's state; the waiter and
``hpcdesk status`` both read phases only through it.
Shared by both sides: imports nothing login-side.
"""

# No `from __future__ import annotations` here: with it, typing.NamedTuple compiles each
# field's annotation string at every start of `hpcdesk list` (issue 23).
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

STARTING = "starting"
LAUNCHING = "launching"
WAITING = "waiting"
READY = "ready"
STOPPING = "stopping"
STOPPED = "stopped"
FAILED = "failed"

# The agent reports at least every HEARTBEAT seconds while it starts the desktop; a waiter
# that hears nothing for SILENCE seconds asks the scheduler whether the job still runs.
HEARTBEAT = 10.0
SILENCE = 3 * HEARTBEAT

State = Literal["starting", "ready", "stopping", "stopped", "failed"]
# Every other phase (starting, launching, waiting, none written yet) means "starting".
_STATES: dict[str, State] = {READY: "ready", STOPPING: "stopping", STOPPED: "stopped",
                             FAILED: "failed"}


class DesktopState(NamedTuple):
    phase: str    # the agent's own word ("" before it has written anything)
    state: State  # what it means: starting | ready | stopping | stopped | failed
    detail: str   # the final reason, else the phase's detail, else the phase
    node: str

    @property
    def ended(self) -> bool:
        """The agent has finished (stopped or failed): the desktop will not become ready."""
        return self.state in (STOPPED, FAILED)


def desktop_state(record: Mapping[str, Any]) -> DesktopState:
    """What the agent's record (node.json or a push event) says about the desktop."""
    phase = str(record.get("phase") or "")
    detail = str(record.get("reason") or record.get("detail") or phase)
    return DesktopState(phase, _STATES.get(phase, "starting"), detail,
                        str(record.get("node") or "node"))
