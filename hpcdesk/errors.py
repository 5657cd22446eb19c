"""Exceptions that carry a user-facing message and an exit code.

Exit codes (documented in docs/reference.md, "Exit codes"):
  0 success, 1 the desktop or job failed, 2 bad input (nothing was submitted; for
  `hpcdesk tunnel` also: SSH login refused, host key not trusted, local port in use),
  3 the scheduler refused or could not be reached (for `hpcdesk tunnel`: the login node or
  hpcdesk on it could not be reached), 4 timed out waiting,
  130 interrupted (the job keeps running unless `hpcdesk tunnel --cancel-on-exit`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_SCHEDULER = 3
EXIT_UNREACHABLE = 3  # the same code: what hpcdesk needs is out of reach (Slurm, SSH)
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130


class HpcdeskError(Exception):
    """An error to show to the user as one clear message (no traceback)."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message + (f"\n  hint: {self.hint}" if self.hint else "")


class UsageError(HpcdeskError):
    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """A wrong configuration value: names the file, the key path and what is allowed."""


class SchedulerError(HpcdeskError):
    exit_code = EXIT_SCHEDULER


class SubmitUncertain(SchedulerError):
    """sbatch did not answer and the scheduler cannot say whether the job was queued."""


class SchedulerRejected(UsageError):
    """The scheduler refused the request because of the user's input (partition, account...)."""


class SessionNotFound(UsageError):
    pass


class WaitTimeout(HpcdeskError):
    exit_code = EXIT_TIMEOUT


class Unreachable(HpcdeskError):
    """A host or service hpcdesk needs cannot be reached (the login node over SSH, or
    hpcdesk on it)."""

    exit_code = EXIT_UNREACHABLE
