"""`hpcdesk submit --connect tunnel`: the exact command to run on the laptop.

It names this login node (user@fully-qualified name), the session, the site when one was
chosen, and `--remote-command` when the hpcdesk running here is not the one a plain SSH
command would find on PATH.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import sys
from pathlib import Path

from hpcdesk.quoting import shq

# The PATH a non-interactive SSH command gets from Debian's/RHEL's sshd before any rc file.
SSH_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def this_hpcdesk() -> Path:
    """The hpcdesk executable running now (the console script next to this Python)."""
    script = Path(sys.executable).with_name("hpcdesk")
    if script.exists():
        return script
    return Path(sys.argv[0]).resolve()


def remote_command() -> str | None:
    """None when `hpcdesk` on SSH's default PATH is this one; else this one's path."""
    mine = this_hpcdesk()
    found = shutil.which("hpcdesk", path=SSH_DEFAULT_PATH)
    if found and os.path.realpath(found) == os.path.realpath(mine):
        return None
    return str(mine)


def login_name() -> str:
    """This login node's name for laptops: its fully qualified name if it has one."""
    name = socket.getfqdn()
    if not name or name.split(".")[0] in ("localhost", "ip6-localhost"):
        name = socket.gethostname()  # a machine whose FQDN resolves to loopback
    return name


def laptop_command(session_id: str, site: str | None, login: str | None = None) -> str:
    host = login or f"{getpass.getuser()}@{login_name()}"
    parts = ["hpcdesk", "tunnel", shq(session_id), "--login", shq(host)]
    cmd = remote_command()
    if cmd:
        parts += ["--remote-command", shq(cmd)]
    if site:
        parts += ["--site", shq(site)]
    return " ".join([*parts, "--open"])
