"""`hpcdesk doctor` on the login node: config, Slurm, session directory, image."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from hpcdesk import config
from hpcdesk.checks import Check
from hpcdesk.errors import ConfigError
from hpcdesk.session import session_root

# Filesystems that compute nodes can share with the login node.
SHARED_FS = {"nfs", "nfs4", "lustre", "gpfs", "beegfs", "cephfs", "ceph", "fuse.sshfs",
             "panfs", "wekafs", "fuse.glusterfs", "glusterfs", "cifs", "smb3", "9p", "virtiofs"}


def _fs_type(path: Path) -> str:
    best, fstype = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return fstype
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mnt = parts[1].replace("\\040", " ")
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    return fstype


def _slurm_checks(loaded: config.LoadedConfig) -> list[Check]:
    out: list[Check] = []
    missing = [c for c in ("sbatch", "squeue", "scancel", "sinfo") if not shutil.which(c)]
    if missing:
        return [Check("slurm commands", "fail", "not found: " + ", ".join(missing),
                      "run hpcdesk on a login node with the Slurm client commands on PATH")]
    out.append(Check("slurm commands", "ok", "sbatch, squeue, scancel, sinfo found"))
    out.append(_backend_check(loaded))
    cluster = loaded.config.scheduler.cluster
    argv = ["squeue", "-h", "-u", getpass.getuser(), "-o", "%i"] + (["-M", cluster] if cluster
                                                                     else [])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        msg = " ".join(proc.stderr.split()) or "squeue failed"
        out.append(Check("slurm controller", "fail", msg,
                         "check `scontrol ping`; the controller may be down or unreachable"))
        return out
    out.append(Check("slurm controller", "ok", "squeue answered"))
    part = loaded.config.scheduler.partition
    if part:
        proc = subprocess.run(["sinfo", "-h", "-p", part, "-o", "%P %a %D"] + (
            ["-M", cluster] if cluster else []), capture_output=True, text=True, timeout=30,
            check=False)
        rows = [r for r in proc.stdout.splitlines() if r.strip() and not r.startswith("CLUSTER")]
        if not rows:
            out.append(Check("partition", "fail", f"partition {part!r} not found",
                             "set scheduler.partition to one that `sinfo -s` lists"))
        else:
            out.append(Check("partition", "ok", "; ".join(rows)))
    return out


def _backend_check(loaded: config.LoadedConfig) -> Check:
    from hpcdesk.scheduler.backends import select_backend

    s = loaded.config.scheduler
    try:
        name, why = select_backend(s.backend, s.cluster)
    except ConfigError as exc:
        return Check("scheduler backend", "fail", exc.message, exc.hint)
    return Check("scheduler backend", "ok", f"{name} ({why})")


def _session_dir_checks(loaded: config.LoadedConfig) -> list[Check]:
    root = session_root(loaded.config.session_root)
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = root / f".doctor-{uuid.uuid4().hex}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return [Check("session directory", "fail", f"{root} is not writable ({exc.strerror})",
                      "set session_root to a writable directory on a shared filesystem")]
    checks = [Check("session directory", "ok", f"{root} is writable")]
    fstype = _fs_type(root)
    if fstype in SHARED_FS:
        checks.append(Check("shared filesystem", "ok", f"{root} is on {fstype}"))
    else:
        checks.append(Check(
            "shared filesystem", "warn",
            f"{root} is on {fstype}, which is usually node-local",
            "compute nodes must see the session directory: point session_root at a shared "
            "filesystem (home, project or scratch), unless this machine is also the node"))
    mode = root.stat().st_mode & 0o777
    if mode & 0o077:
        checks.append(Check("session directory mode", "warn", f"{root} has mode {mode:o}",
                            f"chmod 700 {root}: sessions hold credentials"))
    return checks


def _runtime_checks(loaded: config.LoadedConfig) -> list[Check]:
    r = loaded.config.runtime
    if r.kind != "apptainer":
        return [Check("runtime", "ok", "host runtime: the desktop runs from the node's software")]
    checks = []
    if not shutil.which(r.apptainer):
        checks.append(Check("apptainer", "warn", f"{r.apptainer!r} not on this login node's PATH",
                            "fine if only compute nodes have it; else install apptainer"))
    image = r.image or ""
    if image.endswith(".sif") or "/" in image:
        ok = os.access(image, os.R_OK)
        checks.append(Check("image", "ok" if ok else "fail", f"{image} "
                            f"{'is readable' if ok else 'is missing or unreadable'}",
                            "" if ok else "build it with `hpcdesk image build` or fix "
                            "runtime.image"))
    return checks


def login_checks(site: str | None, overrides: dict[str, Any] | None = None) -> list[Check]:
    try:
        loaded = config.load(site, overrides)
    except ConfigError as exc:
        return [Check("configuration", "fail", str(exc), "fix the file and key named above")]
    where = loaded.site_path or "built-in defaults only"
    checks = [Check("configuration", "ok", f"site {loaded.config.name!r} from {where}")]
    return (checks + _slurm_checks(loaded) + _session_dir_checks(loaded)
            + _runtime_checks(loaded) + _turn_checks(loaded))


def _turn_checks(loaded: config.LoadedConfig) -> list[Check]:
    """A real allocation on the site's TURN server with the credentials a desktop would get."""
    from hpcdesk.connect import turn

    t = loaded.config.turn
    if not turn.configured(t):
        return [Check("TURN server", "skip", "no site TURN server (turn.host); WebRTC needs a "
                      "direct route to the nodes, the in-job TURN or a tunnel")]
    from hpcdesk.connect.probe import ProbeError, allocate

    try:
        turn.check_files(t, loaded.sources)
        servers, _ = turn.site_servers(t, getpass.getuser(), 600, time.time())
    except (ConfigError, turn.TurnError) as exc:
        return [Check("TURN server", "fail", str(exc), "fix the turn.* setting named above")]
    out = []
    for server in servers:
        for url in server.urls:
            if not url.startswith(("turn:", "turns:")):
                continue
            try:
                got = allocate(url, server.username or "", server.credential or "")
            except ProbeError as exc:
                out.append(Check("TURN server", "fail", f"{url}: {exc}",
                                 "check that the server runs and is reachable, and that its "
                                 "secret or users match turn.secret_file/credentials_file"))
                continue
            out.append(Check("TURN server", "ok", f"{url}: allocation granted (relay "
                             f"{got.relayed}), round trip {got.rtt_ms:.1f} ms"))
    return out or [Check("TURN server", "fail", "the site's TURN answer lists no turn: URL",
                         "check turn.rest_uri's service")]
