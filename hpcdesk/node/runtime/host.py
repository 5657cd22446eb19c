"""The host runtime: Xorg, the desktop session and Selkies (PyPI) started directly on the node."""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from hpcdesk.node.errors import StartError
from hpcdesk.node.procs import Child, spawn
from hpcdesk.node.runtime import DesktopPlan, Started
from hpcdesk.node.selkies_policy import policy_env
from hpcdesk.node.selkies_web import web_root_setting
from hpcdesk.node.xserver import start_xorg, write_x_files

# hpcdesk's encoder names (those of the upstream GLX image) -> PyPI selkies' settings.
_SELKIES_ENCODER = {
    "nvh264enc": ("h264enc", "false"),
    "x264enc": ("h264enc", "true"),
    "vp8enc": ("vp8enc", "true"),
    "vp9enc": ("vp9enc", "true"),
    "x264enc-striped": ("h264enc-striped", "true"),
    "jpeg": ("jpeg", "true"),
}
_SELKIES_DPIS = (96, 120, 144, 168, 192, 216, 240, 264, 288)


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


def selkies_env(plan: DesktopPlan, display: str) -> dict[str, str]:
    d = plan.request.desktop
    encoder, use_cpu = _SELKIES_ENCODER[plan.encoder]
    dpi = min(_SELKIES_DPIS, key=lambda x: abs(x - d.dpi))
    webrtc = d.transport == "webrtc"
    addr = plan.bind_addr
    if webrtc and addr not in ("0.0.0.0", "::"):  # noqa: S104
        addr += ",127.0.0.1"  # Selkies' webrtc mode dials itself on localhost:PORT
    env = {
        "DISPLAY": display,
        "SELKIES_ADDR": addr,
        "SELKIES_PORT": str(plan.web_port),
        **_auth_env(plan),
        "SELKIES_ENCODER": encoder,
        "SELKIES_USE_CPU": use_cpu,
        "SELKIES_FRAMERATE": str(d.framerate),
        "SELKIES_VIDEO_BITRATE": str(d.video_bitrate),
        "SELKIES_AUDIO_ENABLED": "true" if d.audio else "false",
        "SELKIES_AUDIO_BITRATE": str(d.audio_bitrate),
        "SELKIES_ENABLE_RESIZE": "true" if d.enable_resize else "false",
        "SELKIES_SCALING_DPI": str(dpi),
        "SELKIES_ENABLE_HTTPS": "true" if plan.tls_cert else "false",
        # The tuning knobs measured by benchmarks/stream.py (README "Performance").
        "SELKIES_RATE_CONTROL_MODE": d.rate_control,
        "SELKIES_VIDEO_CRF": str(d.video_crf),
        "SELKIES_JPEG_QUALITY": str(d.jpeg_quality),
        "SELKIES_CPU_ENCODE_THREADING": "true" if threaded(d.encode_threading,
                                                          plan.encoder_threads) else "false",
        **ice_env(plan),
        **policy_env(plan.request.policy, plan.audit),
    }
    if plan.tls_cert and plan.tls_key:
        env["SELKIES_HTTPS_CERT"], env["SELKIES_HTTPS_KEY"] = str(plan.tls_cert), str(plan.tls_key)
    return env


def threaded(setting: str, encoder_threads: int) -> bool:
    """desktop.encode_threading: always, never, or auto (threads only when the allocation gives
    the encoder 2 or more; on 2 CPUs one thread had lower latency and CPU, README
    "Performance")."""
    return setting == "always" or (setting == "auto" and encoder_threads >= 2)


def _auth_env(plan: DesktopPlan) -> dict[str, str]:
    """Selkies' auth settings. Secrets reach Selkies only through this process's environment
    (readable by the user and root alone), never through argv, the job script or the job's env.
    """
    env: dict[str, str] = {}
    if plan.url_path != "/":
        env["SELKIES_SUBFOLDER"] = plan.url_path
    if plan.master_token:
        # Token mode: no basic auth; the master token guards /api/tokens, and every
        # WebSocket must present a session token that the agent provisioned there.
        env.update({"SELKIES_ENABLE_BASIC_AUTH": "false",
                    "SELKIES_MASTER_TOKEN": plan.master_token})
        return env
    env.update({"SELKIES_ENABLE_BASIC_AUTH": "true", "SELKIES_BASIC_AUTH_USER": plan.user,
                "SELKIES_BASIC_AUTH_PASSWORD": plan.password})
    return env


def ice_env(plan: DesktopPlan) -> dict[str, str]:
    """Transport and ICE settings: only the agent's rtc file decides what a browser gets.

    Selkies takes an empty value for "use the default", and its defaults hand the browser a
    public TURN relay and public STUN servers. The rtc file (connect/rtc.py) overrides them
    all; the host names below are under the reserved .invalid domain, so that even a Selkies
    that ignored the file could name no server outside the site.
    """
    webrtc = plan.request.desktop.transport == "webrtc"
    env = {
        "SELKIES_MODE": plan.request.desktop.transport,
        "SELKIES_ENABLE_DUAL_MODE": "true" if webrtc else "false",
        "SELKIES_ENABLE_CLOUDFLARE_TURN": "false",
        "SELKIES_TURN_HOST": "turn.invalid",
        "SELKIES_STUN_HOST": "stun.invalid",
    }
    if plan.rtc_config:
        env["SELKIES_RTC_CONFIG_JSON"] = str(plan.rtc_config)
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
            denv = {**env, "DISPLAY": x.display}
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
