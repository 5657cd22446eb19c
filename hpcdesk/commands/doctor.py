"""`hpcdesk doctor [--node]`: every failed check names its fix."""

from __future__ import annotations

import argparse

from hpcdesk.checks import checks_to_json, worst
from hpcdesk.commands.common import emit_json, overrides_from_sets
from hpcdesk.errors import EXIT_FAILED, EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.node:
        from hpcdesk.node.node_checks import node_checks

        checks = node_checks()
    else:
        from hpcdesk.login.login_checks import login_checks

        checks = login_checks(args.site, overrides_from_sets(args.set))
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
