"""The apptainer runtime: the desktop image, unprivileged, with a private /tmp per session.

Invocation choices (pinned by tests/unit/test_apptainer_cmd.py):
- `--contain --workdir W`: /tmp, /var/tmp (and the home, unless --home is given) come from
  the session's node-local work directory, so the fixed /tmp paths of the upstream images
  (X socket, nginx pid, rtc.json) never collide between two desktops on one node.
- `--writable-tmpfs` for the upstream images only: their desktop session writes below /etc,
  /var and /opt at start. A tmpfs overlay takes those writes in memory, needs no per-session
  overlay image and vanishes with the container; a persistent overlay would only keep state
  nobody should reuse. hpcdesk's Debian image writes nothing outside $TMPDIR and $HOME, so
  it runs read-only (the overlay costs about 0.8 s of start time).
- No `--pid`: desktops in a shared network namespace name abstract sockets after their PIDs
  (xfce4-session's ICE listener is @/tmp/.ICE-unix/PID); in private PID namespaces two
  desktops get the same PIDs and the second session fails. The agent ends the container's
  process group and its own descendants instead.
- `--cleanenv` plus APPTAINERENV_* in apptainer's own environment: the container sees exactly
  the contract below, and nothing reaches a command line (`ps` shows no setting, no secret).
  The password goes in by file (HPCDESK_PASSWORD_FILE, 0600, in the private /tmp) for every
  image: all of hpcdesk's entrypoints read it, so no environment holds it. So does Selkies'
  master token in token mode (HPCDESK_MASTER_TOKEN_FILE, hpcdesk's images).
- hpcdesk's images (debian, kde) get every SELKIES_* value that the host runtime's Selkies
  gets, from the one mapping (node/selkies_settings.py), less the secrets; and, as the host's,
  SELKIES_WEB_ROOT naming the image's own web client (node/selkies_web.py), so Selkies does not
  copy 11 MB out of the squashfuse mount on every start.
- `--ipc`: a private IPC namespace, so the X server's shared-memory segments are not visible
  to other desktops on the node.
- The agent's rtc file (Selkies' ICE servers, connect/rtc.py) lies in the work directory,
  which is bound in read-only (so a renewed file, replaced by rename, is seen at once), and
  is named in SELKIES_RTC_CONFIG_JSON for every image.
- `--nv` with a bound GPU; where the image's Xorg drives the GPU (the GLX flavour, and
  hpcdesk's images when the binding chose the nvidia driver) the host's NVIDIA X driver and GLX
  server module are bound where that Xorg looks for them, so nothing is downloaded at start.
- The agent's node-local work directory is bound read-only at its own path: it holds the X
  cookie file and the xorg.conf (xserver.write_x_files: the dummy driver for the Debian
  image, the bound GPU for GLX; the EGL image's Xvfb needs none) and the TLS files. The
  images' entrypoints start their X server with these and generate nothing themselves.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hpcdesk.node.displays import DisplayLease
from hpcdesk.node.errors import StartError
from hpcdesk.node.procs import Child, spawn
from hpcdesk.node.runtime import DesktopPlan, Started
from hpcdesk.node.selkies_settings import SECRETS, ice_env, image_env, selkies_env
from hpcdesk.node.selkies_web import web_root_setting
from hpcdesk.node.xserver import XFiles, write_x_files

# Where the upstream images' Xorg looks for the NVIDIA modules.
XORG_MODULE_TARGETS = {
    "nvidia_drv.so": "/usr/lib/xorg/modules/drivers/nvidia_drv.so",
    "libglxserver_nvidia.so": "/usr/lib/xorg/modules/extensions/libglxserver_nvidia.so",
}
ICD_TARGETS = {
    "nvidia_icd.json": "/usr/share/vulkan/icd.d/nvidia_icd.json",
    "10_nvidia.json": "/usr/share/glvnd/egl_vendor.d/10_nvidia.json",
}
log = logging.getLogger(__name__)
PASSWORD_IN_CONTAINER = "/tmp/.hpcdesk-password"  # noqa: S105 - a path, not a secret
TOKEN_IN_CONTAINER = "/tmp/.hpcdesk-master-token"  # noqa: S105 - a path, not a secret


@dataclass(frozen=True)
class ImageKind:
    """How an image is started and which environment contract it reads."""

    flavor: str       # debian | kde | glx | egl
    upstream: bool    # the selkies-project images (supervisord, nginx, PASSWD)

    def xorg_driver(self, planned: Literal["dummy", "nvidia"]
                    ) -> Literal["dummy", "nvidia"] | None:
        """The driver of the image's Xorg (None: its X server, Xvfb, needs no xorg.conf).
        hpcdesk's images run the one the GPU binding chose (`planned`: nvidia on a GPU node
        whose driver has the X module, bound in; else dummy); the GLX image needs nvidia."""
        if self.flavor == "glx":
            return "nvidia"
        return None if self.flavor == "egl" else planned

    @classmethod
    def detect(cls, image: str) -> ImageKind:
        name = Path(image).name.lower()
        for flavor in ("glx", "egl"):
            if flavor in name:
                return cls(flavor, True)
        return cls("kde" if name.startswith("kde") else "debian", False)


@dataclass
class Invocation:
    argv: list[str]
    env: dict[str, str]   # apptainer's own environment (APPTAINERENV_* and the basics)
    password_file: Path   # written 0600 before start; the container reads it from its /tmp
    token_file: Path      # the same for Selkies' master token (desktop.auth token)
    # Secrets Selkies reads only from its environment (the audit bearer token): an
    # `--env-file` in the 0700 work directory, never in apptainer's own argv or environment.
    env_file: Path | None = None
    file_env: dict[str, str] | None = None

    def write_secrets(self, password: str, master_token: str | None) -> None:
        """The secret files the container reads, each 0600 (again on a start on another port)."""
        files = [(self.password_file, password + "\n")]
        if master_token:
            files.append((self.token_file, master_token + "\n"))
        if self.env_file and self.file_env:
            files.append((self.env_file, "".join(f"{k}={v}\n" for k, v in self.file_env.items())))
        for path, text in files:
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)


def contract_env(plan: DesktopPlan, display: str, kind: ImageKind, x: XFiles,
                 driver_version: str | None) -> dict[str, str]:
    """The variables the images read (upstream names, plus hpcdesk's for its own image)."""
    d = plan.request.desktop
    env = {
        "DISPLAY": display,
        "XAUTHORITY": str(x.xauthority),
        "DISPLAY_SIZEW": str(d.width), "DISPLAY_SIZEH": str(d.height),
        "DISPLAY_REFRESH": str(d.refresh), "DISPLAY_DPI": str(d.dpi),
        "DISPLAY_CDEPTH": str(d.depth), "VIDEO_PORT": d.video_port, "TZ": d.timezone,
        "SELKIES_ENCODER": plan.encoder,
        "SELKIES_VIDEO_BITRATE": str(d.video_bitrate),
        "SELKIES_FRAMERATE": str(d.framerate),
        "SELKIES_AUDIO_BITRATE": str(d.audio_bitrate),
        "SELKIES_AUDIO_ENABLED": "true" if plan.audio else "false",
        **plan.sound_env,  # the session's sound server: its socket lies in the bound work dir
        "SELKIES_ENABLE_RESIZE": "true" if d.enable_resize else "false",
        "SELKIES_ENABLE_HTTPS": "true" if plan.tls_cert else "false",
        "NGINX_PORT": str(plan.web_port),
        "KASMVNC_ENABLE": "true" if d.interface == "vnc" else "false",
        "KASMVNC_THREADS": str(max(1, plan.encoder_threads)),
        "HPCDESK_INTERFACE": d.interface,
        "HPCDESK_WEB_PORT": str(plan.web_port),
        "HPCDESK_BIND_ADDR": plan.bind_addr,
        "XDG_RUNTIME_DIR": "/tmp/.hpcdesk-run",
    }
    if plan.tls_cert and plan.tls_key:
        env.update(SELKIES_HTTPS_CERT=str(plan.tls_cert), SELKIES_HTTPS_KEY=str(plan.tls_key),
                   HPCDESK_TLS_CERT=str(plan.tls_cert), HPCDESK_TLS_KEY=str(plan.tls_key))
    if kind.upstream:
        # Upstream images: selkies-gstreamer listens on 127.0.0.1 behind nginx; the entrypoint
        # picks a free internal port itself. Metrics stay off (they have no authentication).
        env["SELKIES_METRICS_HTTP_PORT"] = "0"
        env.update(SELKIES_ENABLE_BASIC_AUTH="true", SELKIES_BASIC_AUTH_USER=plan.user)
        if plan.rtc_config:  # the agent's ICE servers, never the image's STUN default
            env["SELKIES_RTC_CONFIG_JSON"] = ice_env(plan)["SELKIES_RTC_CONFIG_JSON"]
    else:
        # hpcdesk's images: every Selkies setting the host runtime's Selkies gets (the one
        # mapping), less the secrets, which come from files.
        env.update({k: v for k, v in image_env(plan, display).items() if k.startswith("SELKIES_")})
        if plan.master_token:
            env["HPCDESK_MASTER_TOKEN_FILE"] = TOKEN_IN_CONTAINER
    env["HPCDESK_PASSWORD_FILE"] = PASSWORD_IN_CONTAINER
    if x.conf:
        env["HPCDESK_XORG_CONF"] = str(x.conf)
    if plan.bus_id:
        if plan.gpu_uuid:
            env["HPCDESK_GPU_UUID"] = plan.gpu_uuid  # the allocated GPU, not nvidia-smi's first
        env["NVIDIA_DRIVER_CAPABILITIES"] = "all"
        if driver_version:
            env["NVIDIA_DRIVER_VERSION"] = driver_version
    return env


def build_invocation(plan: DesktopPlan, image: str, display: str, x: XFiles,
                     driver_files: dict[str, Path | None], driver_version: str | None,
                     apptainer: str = "apptainer") -> Invocation:
    kind = ImageKind.detect(image)
    r = plan.request.runtime
    workdir = plan.workdir / "apptainer"
    argv = [*shlex.split(apptainer), "run" if kind.upstream else "exec",
            "--cleanenv", "--contain", "--ipc"]
    if kind.upstream:
        argv.append("--writable-tmpfs")
    argv += ["--workdir", str(workdir), "--home", os.environ.get("HOME", str(workdir / "home"))]
    # The X cookie, the xorg.conf and the TLS files, at the paths the contract names.
    argv += ["--bind", f"{plan.workdir}:{plan.workdir}:ro"]
    if plan.bus_id:
        argv.append("--nv")
        targets = dict(ICD_TARGETS)
        if kind.xorg_driver(plan.xorg_driver) == "nvidia":
            targets.update(XORG_MODULE_TARGETS)
        for name, target in targets.items():
            host = driver_files.get(name)
            if host is not None:
                argv += ["--bind", f"{host}:{target}:ro"]
    for bind in r.binds:
        argv += ["--bind", bind]
    # The passwords and tokens come from files (the entrypoint reads them); what else Selkies
    # takes only from its environment goes in by --env-file (hpcdesk's images only).
    file_env = {} if kind.upstream else {
        k: v for k, v in selkies_env(plan, display).items()
        if k in SECRETS and k not in ("SELKIES_BASIC_AUTH_PASSWORD", "SELKIES_MASTER_TOKEN")}
    env_file = workdir / "selkies-secrets.env" if file_env else None
    if env_file:
        argv += ["--env-file", str(env_file)]
    argv.append(image)
    if not kind.upstream:
        argv.append("/opt/hpcdesk/entrypoint.sh")
    contract = contract_env(plan, display, kind, x, driver_version)
    if not kind.upstream:
        web_root = web_root_setting(r.selkies_web_root, image=image)
        if web_root:
            contract["SELKIES_WEB_ROOT"] = web_root
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "USER", "LOGNAME", "LANG")}
    env.update({f"APPTAINERENV_{k}": v for k, v in contract.items()})
    tmp = workdir / "tmp"
    return Invocation(argv, env, tmp / Path(PASSWORD_IN_CONTAINER).name,
                      tmp / Path(TOKEN_IN_CONTAINER).name, env_file, file_env)


def detect_version(command: str) -> tuple[str, str]:
    """(flavour, version) from `apptainer --version` / `singularity --version`.

    Apptainer prints "apptainer version 1.4.5"; SingularityCE "singularity-ce version 4.1.0";
    old Singularity "singularity version 3.8.7". Every one of them has the flags used here
    (--contain, --workdir, --writable-tmpfs, --cleanenv, --ipc, --nv) since 3.x/1.0.
    """
    try:
        proc = subprocess.run([*shlex.split(command), "--version"], capture_output=True,
                              text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartError(f"{command} --version failed: {exc}") from None
    words = proc.stdout.split()
    if proc.returncode != 0 or not words:
        raise StartError(f"{command} --version failed: {proc.stderr.strip() or proc.returncode}")
    version = words[-1]
    major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
    flavour = words[0]
    if flavour.startswith("singularity") and major < 3:
        raise StartError(f"{flavour} {version} is too old: hpcdesk needs Singularity 3.x or "
                         "Apptainer 1.x (for --writable-tmpfs and --cleanenv)")
    return flavour, version


class ApptainerRuntime:
    name = "apptainer"

    def __init__(self) -> None:
        self.display_lease: DisplayLease | None = None

    def start(self, plan: DesktopPlan, timeout: float) -> Started:
        from hpcdesk.images import ImageError, resolve_image
        from hpcdesk.node.driver import driver_file_paths
        from hpcdesk.node.gpu import inventory

        req = plan.request
        command = shlex.split(req.runtime.apptainer)[0]
        if not shutil.which(command):
            raise StartError(f"the apptainer command {command!r} was not found on this node "
                             f"(PATH={os.environ.get('PATH', '')}); load the Apptainer module in "
                             "runtime.setup or set runtime.apptainer to its full path")
        # `apptainer --version` (0.1-0.3 s) runs while the X files and secrets are prepared.
        pool = ThreadPoolExecutor(1, thread_name_prefix="apptainer-version")
        version_check = pool.submit(detect_version, req.runtime.apptainer)
        pool.shutdown(wait=False)
        try:
            image = resolve_image(req.runtime.image or "", req.runtime.image_dir)
        except ImageError as exc:
            raise StartError(f"{exc}; build it with `hpcdesk image build`") from None
        self.display_lease = DisplayLease()
        try:
            display = f":{self.display_lease.acquire()}"
        except RuntimeError as exc:
            raise StartError(str(exc)) from None
        kind = ImageKind.detect(image)
        driver = kind.xorg_driver(plan.xorg_driver)
        if driver == "nvidia" and not plan.bus_id:
            raise StartError(f"the {kind.flavor} image runs Xorg on an NVIDIA GPU, and this job "
                             "has none: ask for a GPU, or use the egl, debian or kde image")
        x = write_x_files(plan.workdir, plan.xorg_spec(driver) if driver else None)
        driver_version = inventory().driver_version if plan.bus_id else None
        inv = build_invocation(plan, image, display, x, driver_file_paths(), driver_version,
                               req.runtime.apptainer)
        for sub in ("tmp", "var_tmp"):
            (plan.workdir / "apptainer" / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        inv.write_secrets(plan.password, None if kind.upstream else plan.master_token)
        flavour, version = version_check.result()
        log.info("container runtime: %s %s", flavour, version)
        child: Child = spawn("apptainer", inv.argv, inv.env, plan.session_dir / "container.log")
        return Started([child], display, x.xauthority, on_stop=self.display_lease.release)
