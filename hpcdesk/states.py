"""A session's state, as `hpcdesk status` and `list` report it (login/status.py decides it)
and as `hpcdesk tunnel` reads it from `status --json`. Imports nothing, so the laptop side
uses it too. A finished job's state is also one of the scheduler's (completed, node_fail...).
"""

from __future__ import annotations

SUBMITTING = "submitting"  # the session exists, sbatch has not answered yet
QUEUED = "queued"
STARTING = "starting"      # the job runs, the desktop is not ready yet
READY = "ready"
STOPPING = "stopping"
UNKNOWN = "unknown"        # the scheduler cannot say right now: keep waiting
CANCELLED = "cancelled"
FAILED = "failed"
TIMEOUT = "timeout"        # the time limit's early signal ended it
IDLE = "idle"              # nobody watched for timeouts.idle
ENDED = "ended"            # gone from the queue, accounting has no record

# States in which the desktop may still become ready (waiting on them makes sense).
WAITING = (SUBMITTING, QUEUED, STARTING, UNKNOWN)
