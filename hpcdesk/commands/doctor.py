"""`hpcdesk doctor [--node]`: every failed check names its fix."""

from __future__ import annotations

import argparse
import contextlib

from hpcdesk.checks import checks_to_json, worst
from hpcdesk.commands.common import emit_json, overrides_from_sets
from hpcdesk.errors import EXIT_FAILED, EXIT_OK, ConfigError


def run(args: argparse.Namespace) -> int:
    if args.node:
        from hpcdesk.node.node_checks import node_checks

        checks = node_checks()
    else:
        from hpcdesk import config
        from hpcdesk.login.login_checks import login_checks
        from hpcdesk.ood.form import portal_checks

        overrides = overrides_from_sets(args.set)
        checks = login_checks(args.site, overrides)
        # What the Open OnDemand app needs from the site file (a broken configuration has
        # already been said by login_checks).
        with contextlib.suppress(ConfigError):
            checks += portal_checks(config.load(args.site, overrides))
    overall = worst(checks)
    if args.json:
        emit_json({"worst": overall, "checks": checks_to_json(checks)})
    else:
        for c in checks:
            print(f"[{c.status:>4}] {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                print(f"       fix: {c.fix}")
        print(f"overall: {overall}")
    return EXIT_FAILED if overall == "fail" else EXIT_OK
