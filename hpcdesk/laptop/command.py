"""`hpcdesk tunnel`: the command-line entry of the laptop side."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import paramiko

from hpcdesk.errors import Unreachable, UsageError
from hpcdesk.laptop import target
from hpcdesk.laptop.auth import Authenticator, TerminalPrompter
from hpcdesk.laptop.remote import default_command
from hpcdesk.laptop.tunnel import Options, Tunnel, close_on_signals
from hpcdesk.laptop.tunnel import run as run_tunnel


def _logging(verbose: int) -> None:
    if verbose:
        logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                            level=logging.DEBUG if verbose > 1 else logging.INFO)
        logging.getLogger("paramiko").setLevel(logging.DEBUG if verbose > 2 else logging.INFO)
        return
    # paramiko logs a dropped connection with a traceback; the tunnel says it in words.
    for name in ("paramiko", "hpcdesk.laptop"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def options(args: argparse.Namespace) -> Options:
    if (args.session is None) == (args.submit is None):
        raise UsageError("name a session (or job id) to connect to, or --submit to start one",
                         hint="hpcdesk tunnel SESSION --login HOST, or "
                              "hpcdesk tunnel --login HOST --submit [submit options]")
    port = args.local_port or 0
    if not 0 <= port < 65536:
        raise UsageError(f"--local-port {port}: not a port number (1..65535)")
    route: list[str] = []
    for flag, value in (("--jump", args.jump), ("--ssh-config", args.ssh_config),
                        ("--remote-command", args.remote_command), ("--site", args.site)):
        if value:
            route += [flag, value]
    return Options(login=args.login, session=args.session, submit=args.submit,
                   local_port=port, open_browser=args.open, cancel_on_exit=args.cancel_on_exit,
                   json=args.json, route_args=route)


def run(args: argparse.Namespace) -> int:
    _logging(args.verbose)
    opts = options(args)
    config = target.load_config(Path(args.ssh_config).expanduser() if args.ssh_config else None)
    hops = target.route(args.login, args.jump, config)
    tunnel = Tunnel(hops, Authenticator(TerminalPrompter()),
                    args.remote_command or default_command(), args.site)
    close_on_signals()
    try:
        return run_tunnel(opts, tunnel)
    except (paramiko.SSHException, EOFError, OSError) as exc:
        # Anything the SSH layer raises that the steps above did not put in words.
        raise Unreachable(f"the SSH connection to {hops[-1].describe()} failed: "
                          f"{exc or type(exc).__name__}") from None

