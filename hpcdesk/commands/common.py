"""Helpers shared by the login-side commands: config loading, scheduler, output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcdesk import config
from hpcdesk.errors import ConfigError
from hpcdesk.scheduler import Scheduler
from hpcdesk.scheduler.backends import get_scheduler
from hpcdesk.session import session_root

if TYPE_CHECKING:
    import argparse


def overrides_from_sets(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"command line: --set {item!r}: expected KEY=VALUE "
                              "(e.g. desktop.dpi=120)")
        out[key.strip()] = config.parse_cli_value(value, key.strip())
    return out


def load_config(args: argparse.Namespace, overrides: dict[str, Any] | None = None,
                user_file: bool = True) -> config.LoadedConfig:
    site = getattr(args, "site", None)
    if overrides is None:
        sets = list(getattr(args, "set", []))
        return config.load_with_sets(site, sets, lambda: overrides_from_sets(sets),
                                     user_file=user_file)
    return config.load(site, overrides, user_file=user_file)


def root_of(loaded: config.LoadedConfig) -> Path:
    return session_root(loaded.value("session_root"))


def scheduler_for(loaded: config.LoadedConfig) -> Scheduler:
    return get_scheduler(loaded.value("scheduler.backend"), cache_dir=root_of(loaded) / ".cache",
                         cluster=loaded.value("scheduler.cluster"),
                         timeout=loaded.value("scheduler.timeout"))


def lazy_scheduler(loaded: config.LoadedConfig) -> Callable[[], Scheduler]:
    """The scheduler, made on first use: a command that has only ended sessions to show
    never loads a backend (pyslurm's import and release check, `sinfo -V`) nor asks Slurm."""
    made: list[Scheduler] = []

    def get() -> Scheduler:
        if not made:
            made.append(scheduler_for(loaded))
        return made[0]

    return get


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def say(msg: str, quiet: bool = False) -> None:
    """Progress for people: stdout normally, stderr when stdout is reserved for JSON."""
    print(msg, file=sys.stderr if quiet else sys.stdout, flush=True)
