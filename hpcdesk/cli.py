"""The `hpcdesk` command: reads the command line and runs the command, importing it lazily.

The command line is defined in arguments.py (argparse). `hpcdesk list` and `status` run on
every shell prompt and in scripts that poll, so their everyday forms are read here without
argparse (quick_args): its import, gettext, locale and help formatter are a sixth of these
commands' start. Anything else, --help, an abbreviation, a missing value, an unknown option,
goes to argparse, which stays the one definition; a test holds the two to the same results.
"""

from __future__ import annotations

import importlib
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

COMMANDS = {
    "submit": ("hpcdesk.commands.submit", "run"),
    "status": ("hpcdesk.commands.sessions", "status"),
    "list": ("hpcdesk.commands.sessions", "list_sessions"),
    "cancel": ("hpcdesk.commands.sessions", "cancel"),
    "logs": ("hpcdesk.commands.sessions", "logs"),
    "share": ("hpcdesk.commands.share", "run"),
    "config": ("hpcdesk.commands.config_cmd", "run"),
    "doctor": ("hpcdesk.commands.doctor", "run"),
    "image": ("hpcdesk.commands.image", "run"),
    "node": ("hpcdesk.commands.node", "run"),
    "ood": ("hpcdesk.commands.ood", "run"),
    "tunnel": ("hpcdesk.laptop.command", "run"),
}

# What quick_args reads, per command: its flags (option -> dest) and its optional positional.
# Both also take --site VALUE and --set KEY=VALUE (repeatable), as arguments.py defines them.
QUICK: dict[str, tuple[dict[str, str], str | None]] = {
    "list": ({"-a": "all", "--all": "all", "--json": "json"}, None),
    "status": ({"--json": "json", "--wait": "wait"}, "session"),
}
_VALUED = ("--site", "--set")


def quick_args(argv: Sequence[str]) -> SimpleNamespace | None:
    """`list` or `status` argv as argparse would read it (the same attributes and values),
    or None for any form this does not take, which argparse then reads (and explains)."""
    if not argv or argv[0] not in QUICK:
        return None
    flags, positional = QUICK[argv[0]]
    sets: list[str] = []
    args: dict[str, object] = {"command": argv[0], "site": None, "set": sets,
                               **{dest: False for dest in flags.values()}}
    if positional:
        args[positional] = None
    words = iter(argv[1:])
    for word in words:
        name, eq, value = word.partition("=")
        if name in _VALUED:
            if not eq:  # the value is the next word; none, or one like an option: argparse's
                value = next(words, "-")
                if value.startswith("-"):
                    return None
            if name == "--site":
                args["site"] = value
            else:
                sets.append(value)
        elif word in flags:
            args[flags[word]] = True
        elif positional and args[positional] is None and not word.startswith("-"):
            args[positional] = word
        else:
            return None
    return SimpleNamespace(**args)


def parse(argv: Sequence[str]) -> Any:
    """The parsed command line (argparse's Namespace, or quick_args' namespace with the same
    attributes): quick_args where it applies, else argparse (which exits with its usage
    message on --help, --version and errors)."""
    quick = quick_args(argv)
    if quick is not None:
        return quick
    from hpcdesk import arguments

    # The subcommand is the first argument (the top level has no options but --help and
    # --version): build its parser alone; anything else gets the whole one and its messages.
    command = argv[0] if argv and argv[0] in arguments.SUBCOMMANDS else None
    return arguments.build_parser(command).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    module, func = COMMANDS[args.command]
    from hpcdesk.errors import EXIT_INTERRUPTED, HpcdeskError

    try:
        result: int = getattr(importlib.import_module(module), func)(args)
        return result
    except HpcdeskError as exc:
        print(f"hpcdesk: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpcdesk: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
