"""The command line's definition: every subcommand, its options and help, built with argparse.

Options several commands take (--site, --set, --json) are defined once and shared through
argparse `parents`; an option that sets a configuration key has that key as its dest, which is
the only flag -> key mapping (commands/submit.py applies it). cli.py runs the commands and
parses `list` and `status` in their everyday forms itself (cli.quick_args), held to this
definition by tests/unit/test_fast_start.py.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from hpcdesk import __version__

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

EPILOG = """\
exit codes: 0 ok, 1 the desktop or job failed, 2 bad input (nothing submitted),
            3 Slurm refused or unreachable, 4 timed out, 130 interrupted (the job keeps running)
docs: README.md and docs/, or `hpcdesk config reference` for every setting"""


def _options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The options several commands share, defined once: (--site/--set, --json)."""
    site = argparse.ArgumentParser(add_help=False)
    site.add_argument("--site", help="site name or path to a site YAML (default: $HPCDESK_SITE, "
                      "/etc/hpcdesk/site.yaml)")
    site.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="any setting, e.g. --set desktop.dpi=120 (repeatable)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true",
                         help="machine-readable output on stdout only")
    return site, as_json


def _setting(p: argparse.ArgumentParser, *flags: str, key: str, help: str = "",
             **kw: Any) -> None:
    """An option that sets one configuration key. The key is its dest: the flag -> key mapping
    lives here alone, and `submit` applies every such dest as a setting."""
    metavar = None if "choices" in kw else flags[-1].lstrip("-").upper()
    p.add_argument(*flags, dest=key, metavar=metavar, help=f"{help}{'; ' if help else ''}"
                   f"sets {key}", **kw)


def _submit(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
            both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("submit", parents=both, help="start a desktop and wait until it answers",
                       description="Submit a desktop job and wait until the desktop answers; "
                       "then print its URL and credentials.")
    p.add_argument("--no-wait", action="store_true", help="print the session id and return")
    _setting(p, "-p", "--partition", key="scheduler.partition")
    _setting(p, "-A", "--account", key="scheduler.account")
    _setting(p, "-q", "--qos", key="scheduler.qos")
    _setting(p, "-t", "--time", key="scheduler.time", help="time limit, e.g. 2:00:00")
    _setting(p, "-c", "--cpus", key="scheduler.cpus", type=int)
    _setting(p, "--mem", key="scheduler.memory", help="memory, e.g. 16G")
    _setting(p, "-G", "--gpus", key="scheduler.gpus", type=int)
    _setting(p, "-M", "--cluster", key="scheduler.cluster")
    _setting(p, "--constraint", key="scheduler.constraint")
    _setting(p, "--reservation", key="scheduler.reservation")
    p.add_argument("-r", "--resolution", help="WIDTHxHEIGHT, e.g. 2560x1440 (sets "
                   "desktop.width and desktop.height)")
    _setting(p, "--runtime", key="runtime.kind", choices=["host", "apptainer"])
    _setting(p, "--image", key="runtime.image", help="apptainer image path or flavour")
    _setting(p, "--interface", key="desktop.interface", choices=["selkies", "vnc"])
    from hpcdesk.encoders import ENCODERS

    _setting(p, "--encoder", key="desktop.encoder", choices=ENCODERS)
    _setting(p, "--connect", key="network.connect", choices=["direct", "turn", "tunnel"],
             help="how your browser reaches the desktop (see docs/users.md)")


def _status(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
            both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", parents=both,
                       help="show one session (URL and credentials when ready)")
    p.add_argument("session", nargs="?", help="session id, id prefix or job id (default: newest)")
    p.add_argument("--wait", action="store_true", help="wait until it is ready or has ended")


def _list(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
          both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("list", parents=both,
                       help="list your sessions (one scheduler query for all)")
    p.add_argument("-a", "--all", action="store_true", help="include ended sessions")


def _cancel(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
            both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("cancel", parents=both, help="stop a desktop and its job")
    p.add_argument("session")
    p.add_argument("--no-wait", action="store_true", help="don't wait for the job to end")


def _share(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
           both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("share", parents=both,
                       help="a link for someone else to watch (or control) a desktop",
                       description="Print a link that lets someone else watch your running "
                       "desktop (--view-only, the default) or control it (--control, where "
                       "the site allows it); --list shows the shares, --revoke ID ends one. "
                       "Shares end with the desktop.")
    p.add_argument("session")
    role = p.add_mutually_exclusive_group()
    role.add_argument("--view-only", action="store_true", help="watch only (the default)")
    role.add_argument("--control", action="store_true", help="keyboard and mouse too")
    role.add_argument("--list", action="store_true", help="list the shares and their state")
    role.add_argument("--revoke", metavar="ID", help="end a share now")
    p.add_argument("--expires", metavar="DURATION", help="lifetime, e.g. 30m, 2h, 1d "
                   "(default and longest: the site's policy.share_max)")


def _logs(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
          both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("logs", parents=[site], help="show a session's logs (job, agent, desktop)")
    p.add_argument("session")
    p.add_argument("-n", "--lines", type=int, default=40, help="lines per log (0: all)")


def _config(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
            both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("config", help="show the merged configuration or the reference")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    csub.add_parser("show", parents=both, help="merged settings and where each came from")
    csub.add_parser("reference", help="every setting, its type, default and meaning (Markdown)")


def _doctor(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
            both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", parents=both,
                       help="check this login node (or, with --node, a GPU node)")
    p.add_argument("--node", action="store_true", help="check the GPU node this runs on")


def _image(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
           both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("image", help="build or list desktop images (admins)")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    i = isub.add_parser("build", parents=both,
                        help="build a desktop image into the site's image directory")
    i.add_argument("--flavor", required=True, choices=["debian", "kde", "glx", "egl"])
    i.add_argument("--tag", help="upstream tag: 24.04, 22.04, 20.04 or a dated one")
    i.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="passed to apptainer build (e.g. DEBIAN_MIRROR=http://mirror/debian)")
    i.add_argument("--force", action="store_true", help="rebuild even if it exists")
    isub.add_parser("list", parents=both, help="flavours, tags and which are built")


def _tunnel(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
            both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "tunnel", parents=[as_json],
        help="on your laptop: open a desktop through SSH to the login node",
        description="Connect from this computer to a desktop through SSH to the login node\n"
        "(your ~/.ssh/config, agent, keys and 2FA apply), forward it to 127.0.0.1 and print\n"
        "the URL. `pip install hpcdesk` is all it needs here.",
        epilog="examples:\n"
        "  hpcdesk tunnel k3x9fq --login alice@login.cluster.edu --open\n"
        "  hpcdesk tunnel --login cluster --open --submit -p gpu -t 2:00:00\n"
        "exit codes: 2 no such session, login refused, host key not trusted, port in use;\n"
        "            3 login node or its hpcdesk unreachable; 130 Ctrl-C (the job keeps\n"
        "            running unless --cancel-on-exit); see docs/users.md, \"Connecting from\n"
        "            your laptop\"",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("session", nargs="?", help="session id, id prefix or job id")
    p.add_argument("--login", required=True, metavar="[USER@]HOST[:PORT]",
                   help="the login node, or a Host alias from your ssh config")
    p.add_argument("-J", "--jump", metavar="HOST[,HOST...]",
                   help="jump host(s) as with ssh -J (default: ProxyJump from your ssh config)")
    p.add_argument("-L", "--local-port", type=int, metavar="PORT",
                   help="local port for the desktop (default: a free one)")
    p.add_argument("--open", action="store_true", help="open the desktop in your browser")
    p.add_argument("--cancel-on-exit", action="store_true",
                   help="cancel the job when the tunnel is closed (Ctrl-C)")
    p.add_argument("--remote-command", metavar="CMD",
                   help="how to run hpcdesk on the login node, e.g. /opt/hpcdesk/bin/hpcdesk "
                   "or 'module load hpcdesk && hpcdesk' (default: $HPCDESK_REMOTE_COMMAND "
                   "or hpcdesk)")
    p.add_argument("--site", help="--site for hpcdesk on the login node")
    p.add_argument("-F", "--ssh-config", metavar="FILE", help="ssh config (default ~/.ssh/config)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log what SSH does")
    p.add_argument("--submit", nargs=argparse.REMAINDER, metavar="SUBMIT_OPTION",
                   help="start a new desktop: everything after --submit goes to `hpcdesk "
                   "submit` on the login node; its progress is shown, then the tunnel opens")


def _ood(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
         both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ood", help="Open OnDemand: generate the batch connect app (admins)")
    osub = p.add_subparsers(dest="ood_command", metavar="ACTION", required=True)
    o = osub.add_parser("generate", parents=both,
                        help="write a batch connect app for this site into --out",
                        description="Write a complete Open OnDemand batch connect app "
                        "(manifest, form, submit, templates, view, icon) for the site; "
                        "install it with: cp -r DIR /var/www/ood/apps/sys/hpcdesk")
    o.add_argument("--out", required=True, metavar="DIR", help="where to write the app")
    o.add_argument("--cluster", help="OOD cluster id for form.yml (default: "
                   "scheduler.cluster, else the site name)")
    o.add_argument("--hpcdesk", metavar="CMD", help="how the dashboard and the job run "
                   "hpcdesk (default: runtime.agent_command, else this Python -m hpcdesk)")
    o.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    o = osub.add_parser("check", help="internal: validate form values (JSON on stdin) for "
                        "submit.yml; print the sbatch arguments")
    o.add_argument("--site", help="site name or path to a site YAML")
    o = osub.add_parser("start",
                        help="internal: make the session for an OOD job (form JSON on stdin)")
    o.add_argument("--site", help="site name or path to a site YAML")
    o.add_argument("--job-script", help="the batch script to keep in the session")
    o = osub.add_parser("wait", help="internal: wait until the OOD job's desktop is ready")
    o.add_argument("--session", required=True, help="session directory")
    o.add_argument("--pid", type=int, help="the agent's process (stop waiting if it ends)")


def _node(sub: Any, site: argparse.ArgumentParser, as_json: argparse.ArgumentParser,
          both: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("node", help="internal: run by the job script on the compute node")
    nsub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    n = nsub.add_parser("run", help="start, publish and supervise the desktop")
    n.add_argument("--session", required=True, help="session directory")

SUBCOMMANDS: dict[str, Callable[..., None]] = {
    "submit": _submit,
    "status": _status,
    "list": _list,
    "cancel": _cancel,
    "share": _share,
    "logs": _logs,
    "config": _config,
    "doctor": _doctor,
    "image": _image,
    "tunnel": _tunnel,
    "ood": _ood,
    "node": _node,
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (for `command`) the one with that subcommand alone: `hpcdesk list`
    and `status` need not build the other eleven (a sixth of their cold start)."""
    parser = argparse.ArgumentParser(
        prog="hpcdesk", description="GPU-accelerated Linux desktops in your browser, as a "
        "Slurm job.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcdesk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    site, as_json = _options()
    for name, add in SUBCOMMANDS.items():
        if command in (None, name):
            add(sub, site, as_json, [site, as_json])
    return parser
