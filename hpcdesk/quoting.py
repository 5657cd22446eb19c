"""The one place where values are made safe for shell scripts and #SBATCH lines."""

from __future__ import annotations

import re
import shlex

from hpcdesk.errors import UsageError

# Characters sbatch would mis-parse in an "#SBATCH --opt=value" line, or that could end the line.
_SBATCH_FORBIDDEN = re.compile(r"[\s'\"`$\\;|&<>(){}]")


def shq(value: object) -> str:
    """Quote any value for POSIX sh. Every value that enters a shell script passes here."""
    return shlex.quote(str(value))


def sbatch_value(name: str, value: object) -> str:
    """Validate a value for an '#SBATCH --name=value' line (no quoting exists there)."""
    text = str(value)
    if not text or _SBATCH_FORBIDDEN.search(text):
        raise UsageError(
            f"scheduler.{name}: {text!r} cannot be passed to Slurm: it is empty or contains "
            "whitespace, quotes or shell metacharacters",
            hint="Slurm names, times and sizes use letters, digits and . _ - : , = + / @ % only",
        )
    return text
