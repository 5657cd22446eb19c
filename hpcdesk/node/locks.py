"""Node-wide exclusive claims (X displays), held for a session's lifetime.

A claim is an abstract Unix socket bound to the name `<scope>/<name>` in the node's network
namespace (Linux): binding is atomic, a second bind of the same name fails with EADDRINUSE,
and the name is released when the socket closes, also when the agent dies. Abstract names are
not files: no directory or lock file that another user could own, chmod, pre-create with mode
000 or have refused by `fs.protected_regular`. Another user can only bind a name first, which
makes the agent pick another display, exactly as if that display were in use; the agent draws
its number at random from a wide range, so squatting names costs as much as holding the
displays. (Ports are not claimed by name at all: a name would tell a neighbour which port is
about to be used; see ports.py.)
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from hpcdesk.trust import owner_name

SCOPE = "hpcdesk"  # shared by every hpcdesk installation on a node, so none of them collide


def try_claim(name: str, scope: str = SCOPE) -> socket.socket | None:
    """The socket holding the claim on `name`, or None if another process holds it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # close-on-exec: not inherited
    try:
        sock.bind(f"\0{scope}/{name}")
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    return sock


def describe_owner(path: Path) -> str | None:
    """"alice (uid 1001)" for a file that exists, None if it does not: for logs that name who
    holds a contested resource."""
    try:
        return owner_name(path.lstat().st_uid)
    except OSError:
        return None
