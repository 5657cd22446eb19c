"""The host runtime: Xorg, the desktop session and Selkies (PyPI) started directly on the node."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from hpcdesk.node.errors import StartError
from hpcdesk.node.procs import Child, spawn
from hpcdesk.node.runtime import DesktopPlan, Started
from hpcdesk.node.selkies_settings import selkies_env
from hpcdesk.node.selkies_web import web_root_setting
from hpcdesk.node.xserver import start_xorg, write_x_files


def base_env(plan: DesktopPlan) -> dict[str, str]:
    keep = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "SHELL", "TERM")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update({
        "XDG_RUNTIME_DIR": str(plan.workdir / "run"),
        "TMPDIR": str(plan.workdir / "tmp"),
        "TZ": plan.request.desktop.timezone,
    })
    return env


def _require(cmd: str, what: str) -> str:
    argv0 = shlex.split(cmd)[0]
    found = shutil.which(argv0)
    if not found:
        raise StartError(f"{what} {argv0!r} was not found on this node",
                         ) from None
    return found


class HostRuntime:
    name = "host"

    def start(self, plan: DesktopPlan, timeout: float) -> Started:
        r, d = plan.request.runtime, plan.request.desktop
        if plan.request.desktop.interface != "selkies":
            raise StartError("the host runtime serves the Selkies interface only; use "
                             "runtime.kind: apptainer for the VNC fallback")
        xorg = r.xorg if os.path.isabs(r.xorg) else _require(r.xorg, "X server")
        if not os.access(xorg, os.X_OK):
            raise StartError(f"X server {xorg!r} was not found on this node")
        session_cmd = shlex.split(r.session)
        _require(r.session, "desktop session")
        selkies_cmd = shlex.split(r.selkies)
        _require(r.selkies, "Selkies command")
        for sub in ("run", "tmp"):
            (plan.workdir / sub).mkdir(mode=0o700, exist_ok=True)
        files = write_x_files(plan.workdir, plan.xorg_spec(plan.xorg_driver))
        env = {**base_env(plan), "XAUTHORITY": str(files.xauthority)}
        logs = plan.session_dir
        x = start_xorg(xorg, files, d.dpi, env, logs / "xorg.out", timeout)
        children: list[Child] = [x.child]
        try:
            # Selkies first: its own start (Python imports, its web server) is the longest
            # step, so it begins while the session and the autostart programs start.
            senv = {**env, **selkies_env(plan, x.display)}
            web_root = web_root_setting(r.selkies_web_root, selkies_cmd[0])
            if web_root:
                senv["SELKIES_WEB_ROOT"] = web_root
            children.append(spawn("selkies", selkies_cmd, senv, logs / "selkies.log",
                                  restartable=True))
            denv = {**env, **plan.sound_env, "DISPLAY": x.display}
            children.append(spawn("desktop session", session_cmd, denv, logs / "desktop.log",
                                  cwd=Path(env.get("HOME", "/"))))
            for i, app in enumerate(r.autostart):
                children.append(spawn(f"autostart[{i}] {app}", shlex.split(app), denv,
                                      logs / "desktop.log", cwd=Path(env.get("HOME", "/")),
                                      essential=False))
        except BaseException:
            from hpcdesk.node.procs import stop_all

            stop_all(children)
            raise
        return Started(children, x.display, files.xauthority)
