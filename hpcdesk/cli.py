"""The `hpcdesk` command: a thin layer that parses arguments and imports the rest lazily."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hpcdesk import __version__

EPILOG = """\
exit codes: 0 ok, 1 the desktop or job failed, 2 bad input (nothing submitted),
            3 Slurm refused or unreachable, 4 timed out, 130 interrupted (the job keeps running)
docs: README.md, or `hpcdesk config reference` for every setting"""


def _add_site(p: argparse.ArgumentParser) -> None:
    p.add_argument("--site", help="site name or path to a site YAML (default: $HPCDESK_SITE, "
                   "/etc/hpcdesk/site.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting, e.g. --set desktop.dpi=120 (repeatable)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcdesk", description="GPU-accelerated Linux desktops in your browser, as a "
        "Slurm job.", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hpcdesk {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("submit", help="start a desktop and wait until it answers",
                       description="Submit a desktop job and wait until the desktop answers; "
                       "then print its URL and credentials.")
    _add_site(p)
    _add_json(p)
    p.add_argument("--no-wait", action="store_true", help="print the session id and return")
    p.add_argument("-p", "--partition")
    p.add_argument("-A", "--account")
    p.add_argument("-q", "--qos")
    p.add_argument("-t", "--time", help="time limit, e.g. 2:00:00")
    p.add_argument("-c", "--cpus", type=int)
    p.add_argument("--mem", dest="memory", help="memory, e.g. 16G")
    p.add_argument("-G", "--gpus", type=int)
    p.add_argument("-M", "--cluster")
    p.add_argument("--constraint")
    p.add_argument("--reservation")
    p.add_argument("-r", "--resolution", help="WIDTHxHEIGHT, e.g. 2560x1440")
    p.add_argument("--runtime", choices=["host", "apptainer"])
    p.add_argument("--image", help="apptainer image path or flavour")
    p.add_argument("--interface", choices=["selkies", "vnc"])
    p.add_argument("--encoder", choices=["auto", "nvh264enc", "x264enc", "vp8enc", "vp9enc"])
    p.add_argument("--connect", choices=["direct", "turn", "tunnel"],
                   help="how your browser reaches the desktop (see README)")

    p = sub.add_parser("status", help="show one session (URL and credentials when ready)")
    p.add_argument("session", nargs="?", help="session id, id prefix or job id (default: newest)")
    p.add_argument("--wait", action="store_true", help="wait until it is ready or has ended")
    _add_site(p)
    _add_json(p)

    p = sub.add_parser("list", help="list your sessions (one scheduler query for all)")
    p.add_argument("-a", "--all", action="store_true", help="include ended sessions")
    _add_site(p)
    _add_json(p)

    p = sub.add_parser("cancel", help="stop a desktop and its job")
    p.add_argument("session")
    p.add_argument("--no-wait", action="store_true", help="don't wait for the job to end")
    _add_site(p)
    _add_json(p)

    p = sub.add_parser("logs", help="show a session's logs (job, agent, desktop)")
    p.add_argument("session")
    p.add_argument("-n", "--lines", type=int, default=40, help="lines per log (0: all)")
    _add_site(p)

    p = sub.add_parser("config", help="show the merged configuration or the reference")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("show", help="merged settings and where each came from")
    _add_site(c)
    _add_json(c)
    csub.add_parser("reference", help="every setting, its type, default and meaning (Markdown)")

    p = sub.add_parser("doctor", help="check this login node (or, with --node, a GPU node)")
    p.add_argument("--node", action="store_true", help="check the GPU node this runs on")
    _add_site(p)
    _add_json(p)

    p = sub.add_parser("image", help="build or list desktop images (admins)")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    i = isub.add_parser("build", help="build a desktop image into the site's image directory")
    i.add_argument("--flavor", required=True, choices=["debian", "glx", "egl"])
    i.add_argument("--tag", help="upstream tag: 24.04, 22.04, 20.04 or a dated one")
    i.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="passed to apptainer build (e.g. DEBIAN_MIRROR=http://mirror/debian)")
    i.add_argument("--force", action="store_true", help="rebuild even if it exists")
    _add_site(i)
    _add_json(i)
    i = isub.add_parser("list", help="flavours, tags and which are built")
    _add_site(i)
    _add_json(i)

    p = sub.add_parser(
        "tunnel", help="on your laptop: open a desktop through SSH to the login node",
        description="Connect from this computer to a desktop through SSH to the login node\n"
        "(your ~/.ssh/config, agent, keys and 2FA apply), forward it to 127.0.0.1 and print\n"
        "the URL. `pip install hpcdesk` is all it needs here.",
        epilog="examples:\n"
        "  hpcdesk tunnel k3x9fq --login alice@login.cluster.edu --open\n"
        "  hpcdesk tunnel --login cluster --open --submit -p gpu -t 2:00:00\n"
        "exit codes: 2 no such session, login refused, host key not trusted, port in use;\n"
        "            3 login node or its hpcdesk unreachable; 130 Ctrl-C (the job keeps\n"
        "            running unless --cancel-on-exit); see README \"Connecting from your laptop\"",
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
    _add_json(p)
    p.add_argument("--submit", nargs=argparse.REMAINDER, metavar="SUBMIT_OPTION",
                   help="start a new desktop: everything after --submit goes to `hpcdesk "
                   "submit` on the login node; its progress is shown, then the tunnel opens")

    p = sub.add_parser("node", help="internal: run by the job script on the compute node")
    nsub = p.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    n = nsub.add_parser("run", help="start, publish and supervise the desktop")
    n.add_argument("--session", required=True, help="session directory")
    return parser


COMMANDS = {
    "submit": ("hpcdesk.commands.submit", "run"),
    "status": ("hpcdesk.commands.sessions", "status"),
    "list": ("hpcdesk.commands.sessions", "list_sessions"),
    "cancel": ("hpcdesk.commands.sessions", "cancel"),
    "logs": ("hpcdesk.commands.sessions", "logs"),
    "config": ("hpcdesk.commands.config_cmd", "run"),
    "doctor": ("hpcdesk.commands.doctor", "run"),
    "image": ("hpcdesk.commands.image", "run"),
    "node": ("hpcdesk.commands.node", "run"),
    "tunnel": ("hpcdesk.laptop.command", "run"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
