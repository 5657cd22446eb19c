"""`hpcdesk config show | reference`."""

from __future__ import annotations

import argparse

from hpcdesk import config
from hpcdesk.commands.common import emit_json, load_config
from hpcdesk.errors import EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.config_command == "reference":
        print(config.render_reference())
        return EXIT_OK
    loaded = load_config(args)
    if args.json:
        emit_json({k: {"value": v, "source": loaded.sources[k]}
                   for k, v in loaded.flat().items()})
    else:
        print(config.render_show(loaded))
    return EXIT_OK
