"""`hpcdesk doctor --node`: what other users of a shared node did to the node-wide names.

- the socket directories in /tmp (/tmp/.X11-unix, /tmp/.ICE-unix): missing is fine (X
  servers make them), another user's or unsafe is reported (desktops still start: Xorg then
  listens on its abstract socket only, see xserver.py);
- X lock files /tmp/.XN-lock of other users whose server is gone: each costs the host
  runtime's Xorg a retry (the apptainer runtime ignores them, displays.py);
- hpcdesk's display claims (abstract names in /proc/net/unix) and X sockets: how many are
  held, against the range the agent draws from.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from hpcdesk.checks import Check, Status
from hpcdesk.node.displays import FIRST, LAST, x_sockets
from hpcdesk.node.locks import SCOPE, describe_owner
from hpcdesk.node.xserver import SOCKET_DIRS, socket_dir_problem

_LOCK = re.compile(r"^\.X(\d+)-lock$")
CROWDED = 0.5  # warn when this share of the display range is taken


def socket_dir_checks(dirs: tuple[Path, ...] = SOCKET_DIRS) -> list[Check]:
    checks = []
    for path in dirs:
        name = f"{path.name.strip('.').lower()}-dir"  # x11-unix-dir, ice-unix-dir
        problem = socket_dir_problem(path)
        if problem:
            checks.append(Check(
                name, "warn", problem,
                f"as root: rm -rf {path} (no X server running) or chown root:root {path} && "
                f"chmod 1777 {path}; desktops still start (Xorg uses its abstract socket), "
                "but programs that need the directory may not"))
        elif not path.exists():
            checks.append(Check(name, "ok", f"{path} is missing (made by the first X server "
                                "that needs it)"))
        else:
            checks.append(Check(name, "ok", f"{path} is root's, mode 1777"
                                if path.stat().st_uid == 0 else f"{path} is yours"))
    return checks


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # someone else's live process
    return True


def stale_locks(tmp: Path = Path("/tmp"), uid: int | None = None) -> dict[str, int]:
    """Other users' X lock files whose process is gone: {owner: count}."""
    me = os.getuid() if uid is None else uid
    owners: dict[str, int] = {}
    try:
        names = os.listdir(tmp)
    except OSError:
        return owners
    for name in names:
        if not _LOCK.match(name):
            continue
        path = tmp / name
        try:
            if path.lstat().st_uid == me:
                continue
            text = path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit() and _pid_alive(int(text)):
            continue
        owner = describe_owner(path) or "unknown"
        owners[owner] = owners.get(owner, 0) + 1
    return owners


def claim_checks(tmp: Path = Path("/tmp"), proc_net_unix: Path = Path("/proc/net/unix")
                 ) -> list[Check]:
    checks = []
    stale = stale_locks(tmp)
    if stale:
        who = ", ".join(f"{n} of {owner}" for owner, n in sorted(stale.items()))
        checks.append(Check(
            "x-lock-files", "warn", f"{sum(stale.values())} X lock files in {tmp} without a "
            f"running server ({who})", f"as root: remove them ({tmp}/.XN-lock); they cost "
            "host-runtime desktops a retry each and are ignored by container desktops"))
    else:
        checks.append(Check("x-lock-files", "ok", "no stale X lock files of other users"))
    try:
        text = proc_net_unix.read_text()
    except OSError:
        text = ""
    claims = text.count(f"@{SCOPE}/display-")
    sockets = len({n for n in x_sockets(proc_net_unix) if FIRST <= n <= LAST})
    span = LAST - FIRST + 1
    taken = claims + sockets
    status: Status = "warn" if taken > span * CROWDED else "ok"
    checks.append(Check(
        "display-claims", status, f"{claims} hpcdesk display claims and {sockets} X sockets "
        f"held in :{FIRST}-:{LAST} ({span} displays)",
        "" if status == "ok" else "someone holds many display names on this node: find the "
        "processes (ss -xlp as root) and their owner"))
    return checks


def neighbour_checks() -> list[Check]:
    return [*socket_dir_checks(), *claim_checks()]
