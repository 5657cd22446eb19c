"""`hpcdesk ood ...`: generate the Open OnDemand app (admins), and the steps its job runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hpcdesk.commands.common import emit_json, load_config, say
from hpcdesk.errors import EXIT_FAILED, EXIT_OK, UsageError


def _form_values() -> dict[str, Any]:
    """The form values as JSON on stdin (never argv: a value is data, not an option)."""
    try:
        data = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        raise UsageError(f"form: the values on stdin are not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("form: the values on stdin must be a JSON object")
    return data


def run(args: argparse.Namespace) -> int:
    action = args.ood_command
    if action == "generate":
        from hpcdesk.ood.app import generate

        # The form offers what the site file offers: the admin's own config file stays out.
        loaded = load_config(args, user_file=False)
        site_arg = args.site or (str(loaded.site_path) if loaded.site_path else "")
        if not site_arg:
            raise UsageError("name the site: --site NAME or --site /path/to/site.yaml")
        done = generate(loaded, site_arg, Path(args.out), cluster=args.cluster,
                        hpcdesk_command=args.hpcdesk, force=args.force)
        for warning in done.warnings:
            print(f"hpcdesk: warning: {warning}", file=sys.stderr)
        if args.json:
            emit_json({"out": str(done.out), "files": done.files, "warnings": done.warnings})
        else:
            say(f"hpcdesk: wrote the Open OnDemand app to {done.out}: " + ", ".join(done.files))
            say(f"  install it:  sudo cp -r {done.out} /var/www/ood/apps/sys/hpcdesk")
        return EXIT_OK
    if action == "check":
        from hpcdesk.ood.form import check

        checked = check(args.site, _form_values())
        emit_json({"native": checked.native})
        return EXIT_OK
    if action == "start":
        from hpcdesk.ood.job import start

        session = start(args.site, _form_values(),
                        Path(args.job_script) if args.job_script else None)
        print(session.dir, flush=True)
        return EXIT_OK
    from hpcdesk.ood.job import NotReady, card, shell_assignments, wait

    try:
        conn = wait(Path(args.session), args.pid)
    except NotReady as exc:
        print(f"hpcdesk: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    record = conn.to_dict()
    sys.stdout.write(shell_assignments(record, card(Path(args.session), record)))
    return EXIT_OK
