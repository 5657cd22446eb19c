"""hpcdesk on the login node, run over the tunnel's own SSH connection.

The remote command (default `hpcdesk`, or e.g. `module load hpcdesk && hpcdesk`) goes to
the user's login shell as written; every argument added to it passes `shq`. Its progress
lines (stderr) are shown as they come; its answer is the JSON it prints on stdout. Its exit
codes keep their meaning, so "no such session" is exit code 2 here too.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paramiko

from hpcdesk.errors import (
    EXIT_FAILED,
    EXIT_SCHEDULER,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    HpcdeskError,
    Unreachable,
)
from hpcdesk.quoting import shq

log = logging.getLogger(__name__)

REMOTE_ENV = "HPCDESK_REMOTE_COMMAND"
ERROR_PREFIX = "hpcdesk: error: "


class ConnectionLost(Exception):
    """The SSH connection dropped while a remote command ran (the tunnel reconnects)."""


class RemoteError(HpcdeskError):
    """hpcdesk on the login node said no; carries its exit code."""

    def __init__(self, message: str, code: int, hint: str = "") -> None:
        super().__init__(message, hint)
        self.exit_code = code


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def default_command() -> str:
    return os.environ.get(REMOTE_ENV, "").strip() or "hpcdesk"


@dataclass
class RemoteHpcdesk:
    transport: Callable[[], paramiko.Transport]
    host: str                  # for messages: the login node as the user named it
    command: str = "hpcdesk"
    site: str | None = None

    def command_line(self, args: Sequence[str]) -> str:
        extra = ["--site", self.site] if self.site else []
        return " ".join([self.command, *(shq(a) for a in (*args, *extra))])

    def run(self, args: Sequence[str], show_progress: bool = False) -> Result:
        line = self.command_line(args)
        log.info("on %s: %s", self.host, line)
        try:
            chan = self.transport().open_session(timeout=30)
            chan.exec_command(line)
            return _collect(chan, show_progress)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from None

    def json(self, args: Sequence[str], show_progress: bool = False) -> dict[str, Any]:
        """Run `hpcdesk ARGS --json` and return its answer, or raise its error."""
        res = self.run([*args, "--json"], show_progress)
        if res.code != 0:
            raise self.failure(res)
        data = json_document(res.stdout)
        if data is None:
            raise Unreachable(
                f"hpcdesk on {self.host} answered something that is not its JSON: "
                f"{res.stdout.strip()[:200]!r}",
                hint="is `--remote-command` an hpcdesk of the same version as this one?")
        return data

    def failure(self, res: Result) -> HpcdeskError:
        said = res.stderr.strip()
        if res.code in (126, 127):
            return Unreachable(
                f"hpcdesk is not installed on the login node {self.host}, or not where "
                f"`{self.command}` finds it (its shell said: {_last_line(said) or res.code})",
                hint="install it there, or say how to run it: --remote-command "
                     "/path/to/hpcdesk (or 'module load hpcdesk && hpcdesk'); "
                     f"${REMOTE_ENV} sets a default")
        message, hint = _error_of(said)
        code = res.code if res.code in (EXIT_FAILED, EXIT_USAGE, EXIT_SCHEDULER,
                                        EXIT_TIMEOUT) else EXIT_SCHEDULER
        return RemoteError(f"on {self.host}: {message or f'hpcdesk exited with {res.code}'}",
                           code, hint)


def json_document(text: str) -> dict[str, Any] | None:
    """The JSON object hpcdesk printed, also after what a chatty login shell printed first
    (a banner, `module` messages): the first line starting with `{` that parses to the end."""
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    for i in starts:
        if text.startswith("{", i):
            try:
                data = json.loads(text[i:])
            except ValueError:
                continue
            return data if isinstance(data, dict) else None
    return None


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def _error_of(stderr: str) -> tuple[str, str]:
    """hpcdesk's own error message and hint from its stderr (else the stderr itself)."""
    lines = stderr.splitlines()
    for i, ln in enumerate(lines):
        if ln.startswith(ERROR_PREFIX):
            rest = [r.strip() for r in lines[i + 1:]]
            hints = [r[len("hint:"):].strip() for r in rest if r.startswith("hint:")]
            body = [r for r in rest if r and not r.startswith("hint:")]
            return "\n  ".join([ln[len(ERROR_PREFIX):].strip(), *body]), " ".join(hints)
    return _last_line(stderr), ""


class _ProgressPrinter:
    """Passes hpcdesk's progress lines to our stderr until its error begins (which is
    reported once, as our own error); other output (a login shell's noise) is not shown."""

    def __init__(self) -> None:
        self.partial = ""
        self.in_error = False

    def feed(self, text: str) -> None:
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for ln in lines:
            self.in_error = self.in_error or ln.startswith(ERROR_PREFIX)
            if not self.in_error and ln.startswith(("hpcdesk: ", "  ")):
                print(ln, file=sys.stderr, flush=True)


def _collect(chan: paramiko.Channel, show_progress: bool) -> Result:
    out, err = bytearray(), bytearray()
    printer = _ProgressPrinter() if show_progress else None
    try:
        while True:
            got = False
            while chan.recv_ready():
                out += chan.recv(65536)
                got = True
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err += data
                if printer:
                    printer.feed(data.decode(errors="replace"))
                got = True
            if not chan.get_transport().is_active():
                raise ConnectionLost("the connection closed while hpcdesk ran on the login node")
            drained = not chan.recv_ready() and not chan.recv_stderr_ready()
            if drained and (chan.exit_status_ready() or chan.closed):
                break
            if not got:
                select.select([chan], [], [], 1.0)
        code = chan.recv_exit_status()
    finally:
        chan.close()
    if printer and printer.partial:
        printer.feed("\n")
    return Result(code, out.decode(errors="replace"), err.decode(errors="replace"))
