"""The site configuration schema: every key, its type, its limits and its help text.

This module is data only (dataclasses with field metadata). `config.py` loads and validates
YAML against it, and `hpcdesk config reference` renders the docs' reference table from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from hpcdesk.encoders import Encoder

SLURM_NAME = r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*"


def opt(default: Any, help: str, **meta: Any) -> Any:
    """A schema field: default value, help text and validation metadata (min, max, pattern)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


_TIME_RE = re.compile(
    r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
    r"|(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)|(?P<mm>\d+):(?P<ss>\d+)|(?P<only>\d+))$"
)


def parse_resolution(text: str) -> tuple[int, int]:
    """WIDTHxHEIGHT ("1920x1080") as two integers; ValueError naming the form if it is not."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT (e.g. 1920x1080)")
    return int(m.group(1)), int(m.group(2))


def slurm_time_seconds(text: str) -> int:
    """Seconds in a Slurm time limit ("90", "1:30:00", "2-12", "1-00:00:00"). ValueError if bad."""
    m = _TIME_RE.match(text.strip())
    if not m:
        raise ValueError(
            f"{text!r} is not a Slurm time: use minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or "
            "D-HH:MM:SS (for example 2:00:00)"
        )
    g = {k: int(v) for k, v in m.groupdict().items() if v is not None}
    if "only" in g:
        secs = g["only"] * 60
    elif "mm" in g:
        secs = g["mm"] * 60 + g["ss"]
    elif "h" in g:
        secs = g["h"] * 3600 + g["m"] * 60 + g["s"]
    else:
        secs = g["d"] * 86400 + g["dh"] * 3600 + g.get("dm", 0) * 60 + g.get("ds", 0)
    if secs <= 0:
        raise ValueError(f"{text!r} is not a positive time limit")
    return secs


@dataclass
class SchedulerConfig:
    backend: Literal["slurm-cli", "pyslurm", "auto"] = opt(
        "slurm-cli", "How hpcdesk talks to Slurm: its commands (slurm-cli), its C API through "
        "pyslurm (hpcdesk[pyslurm], built for this Slurm), or auto (pyslurm when it matches "
        "this host's Slurm, else the commands; `hpcdesk doctor` says which and why)."
    )
    cluster: str | None = opt(
        None, "Slurm cluster for multi-cluster sites (sbatch -M); the session remembers it.",
        pattern=SLURM_NAME,
    )
    partition: str | None = opt(None, "Partition(s) to submit to.", pattern=SLURM_NAME)
    account: str | None = opt(None, "Account to charge.", pattern=SLURM_NAME)
    qos: str | None = opt(None, "Quality of service.", pattern=SLURM_NAME)
    time: str = opt("4:00:00", "Time limit (Slurm format, e.g. 2:00:00 or 1-00:00:00).",
                    check="slurm_time")
    cpus: int = opt(4, "CPUs per desktop (also sizes the software encoder's threads).",
                    min=1, max=1024)
    memory: str = opt("16G", "Memory per desktop (Slurm --mem syntax, e.g. 16G).",
                      pattern=r"\d+[KMGT]?")
    gpus: int = opt(1, "GPUs per desktop (--gres=gpu:N); 0 for a CPU-only desktop.", min=0, max=16)
    gres: str | None = opt(None, "Explicit --gres value (e.g. gpu:a100:1); overrides gpus.",
                           pattern=r"[A-Za-z0-9_:.,+-]+")
    constraint: str | None = opt(None, "Node feature constraint (--constraint).",
                                 pattern=r"[A-Za-z0-9_.,&|!*\[\]+-]+")
    reservation: str | None = opt(None, "Reservation name.", pattern=SLURM_NAME)
    extra_args: list[str] = opt(
        [], "Further sbatch options, each '--name' or '--name=value' (validated, never a shell).",
        item_pattern=r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:=+/@%-]+)?",
    )
    signal_lead: int = opt(
        120, "Seconds before the time limit at which the desktop is told to save and stop.",
        min=10, max=3600,
    )
    job_name: str = opt("hpcdesk", "Slurm job name.", pattern=r"[A-Za-z0-9_.-]{1,64}")
    timeout: float = opt(30.0, "Seconds one Slurm command (sbatch, squeue, ...) may take; a "
                         "submission that times out is looked up by its tag before anything "
                         "is decided.", min=1, max=600)
    unstartable: Literal["cancel", "keep"] = opt(
        "cancel", "A job Slurm says can never start (PartitionTimeLimit, InvalidAccount, a "
        "required node down...): the wait ends at once with the cause; cancel the job, or "
        "keep it queued (an administrator may still change the limit).")


@dataclass
class RuntimeConfig:
    kind: Literal["host", "apptainer"] = opt(
        "host", "host: Xorg, desktop and Selkies from the node; apptainer: a desktop image."
    )
    image: str | None = opt(
        None, "Apptainer image: a .sif path or a flavour name (glx, egl, debian).")
    binds: list[str] = opt([], "Extra Apptainer binds (SRC[:DST[:ro]]).",
                           item_pattern=r"[^\s,]+")
    apptainer: str = opt("apptainer", "The apptainer (or singularity) command.")
    image_dir: str = opt("~/.hpcdesk/images", "Where `hpcdesk image build` puts images and "
                         "where flavour names are looked up (a shared directory at most sites).")
    xorg: str = opt("/usr/lib/xorg/Xorg", "The Xorg server binary (not the setuid wrapper).")
    selkies: str = opt("selkies", "The Selkies command (PyPI selkies) for the host runtime.")
    selkies_web_root: str = opt(
        "auto", "Where Selkies serves its web client from: auto (the installed package's own "
        "files, in place), copy (Selkies' default: a fresh copy on every start, slower) or a "
        "directory.", pattern=r"auto|copy|/\S+")
    sound_server: str = opt(
        "pulseaudio", "The PulseAudio daemon each desktop gets as its own sound server "
        "(desktop.audio; a full path where it is not on the job's PATH).")
    session: str = opt("openbox", "Desktop session / window manager command.")
    autostart: list[str] = opt(["xterm"], "Programs started in the desktop after the session.")
    agent_command: str | None = opt(
        None, "How the job starts hpcdesk on the node (default: this Python, -m hpcdesk).",
    )
    setup: list[str] = opt(
        [], "Shell lines the job runs before the agent (e.g. 'module load selkies'). "
        "Site file only: a user file or the command line cannot set it.", admin=True,
    )


@dataclass
class DesktopConfig:
    interface: Literal["selkies", "vnc"] = opt(
        "selkies", "Web interface: Selkies (WebRTC/WebSockets) or the VNC fallback."
    )
    width: int = opt(1920, "Screen width in pixels.", min=640, max=7680)
    height: int = opt(1080, "Screen height in pixels.", min=480, max=4320)
    refresh: int = opt(60, "Refresh rate in Hz.", min=10, max=240)
    dpi: int = opt(96, "Screen DPI.", min=48, max=480)
    depth: Literal[16, 24, 30] = opt(24, "Colour depth in bits.")
    encoder: Encoder = opt(
        "auto", "Video encoder; auto picks NVENC only when an encode session really opens."
    )
    video_bitrate: int = opt(8000, "Video bitrate in kbit/s.", min=100, max=1000000)
    framerate: int = opt(60, "Frames per second.", min=8, max=240)
    rate_control: Literal["cbr", "crf"] = opt(
        "cbr", "Video rate control: cbr (video_bitrate) or crf (constant quality, video_crf).")
    video_crf: int = opt(25, "Quality under rate_control crf (lower is better).", min=5, max=50)
    jpeg_quality: int = opt(40, "JPEG quality of the jpeg encoder.", min=1, max=100)
    encode_threading: Literal["auto", "always", "never"] = opt(
        "auto", "Spread each frame of a software encoder over threads; auto: only when the "
        "encoder gets 2 or more threads (4+ CPUs), as one thread was faster on 2 CPUs.")
    audio: bool = opt(
        True, "Sound: what plays in the desktop plays in the browser (Opus, over websockets "
        "and webrtc), from the desktop's own PulseAudio server. Where the node has no sound "
        "server the desktop starts without sound, and submit/status say so.")
    audio_bitrate: int = opt(128000, "Audio bitrate in bit/s.", min=6000, max=510000)
    enable_resize: bool = opt(False, "Resize the remote screen to the browser window.")
    timezone: str = opt("UTC", "TZ inside the desktop.", pattern=r"[A-Za-z0-9_+/-]+")
    video_port: str = opt("DFP", "NVIDIA connected monitor: DFP, DP-N or none.",
                          pattern=r"DFP|DP-\d+|none")
    user: str | None = opt(None, "Basic-auth user name (default: your login name).",
                           pattern=r"[A-Za-z0-9_.-]{1,32}")
    https: bool = opt(True, "Serve the web UI over HTTPS (browsers need it for the Selkies "
                      "client anywhere but localhost).")
    https_cert: str | None = opt(None, "PEM certificate for HTTPS (default: a self-signed one "
                                 "made on the node per session).")
    https_key: str | None = opt(None, "PEM key for https_cert.")
    transport: Literal["websockets", "webrtc"] = opt(
        "websockets", "Selkies transport: websockets (one HTTP/WS port, works through any TCP "
        "forward) or webrtc (UDP media, lower latency; needs a path for ICE: the node's "
        "address, the site's TURN server or the in-job TURN). Switching in the UI is offered "
        "only with webrtc.",
    )
    auth: Literal["auto", "basic", "token"] = opt(
        "auto", "How the browser proves itself to Selkies: token (a per-session token in the "
        "URL fragment, `#token=...`: one link that works as printed for every transport, "
        "through proxies that drop the Authorization header such as Open OnDemand's, and the "
        "only mode with `hpcdesk share`), basic (user and password, typed into the browser's "
        "prompt) or auto (token wherever Selkies 2.x runs: the host runtime or hpcdesk's "
        "images (debian, kde); basic elsewhere).")
    url_path: str = opt(
        "/", "Path the web UI is served under; {host} and {port} stand for the published "
        "address and port (Open OnDemand's /node/{host}/{port}/ proxy keeps its prefix).",
        pattern=r"/([A-Za-z0-9_.-]+/|\{host\}/|\{port\}/)*")
    allowed_origins: list[str] = opt(
        [], "Browser origins (scheme://host[:port]) besides the desktop's own whose pages may "
        "open its WebSocket: the Open OnDemand portal's, whose proxy does not keep the Host "
        "header (Selkies refuses a WebSocket from any other origin). Never '*'. Site file only.",
        item_pattern=r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", admin=True)


@dataclass
class NetworkConfig:
    address: Literal["hostname", "interface", "fixed"] = opt(
        "hostname", "How the node's reachable address is chosen."
    )
    interface: str | None = opt(None, "Interface whose IPv4 address is used (address: interface).",
                                pattern=r"[A-Za-z0-9_.:-]{1,15}")
    fixed_address: str | None = opt(None, "Address to publish (address: fixed).",
                                    pattern=r"[A-Za-z0-9_.:-]+")
    port_min: int = opt(0, "Lowest web port (0: let the kernel choose).", min=0, max=65535)
    port_max: int = opt(0, "Highest web port (0: let the kernel choose).", min=0, max=65535)
    push: bool = opt(True, "Let the node report readiness straight to the waiting client.")
    login_address: str | None = opt(
        None, "Address of the login node as seen from compute nodes (for push readiness).",
        pattern=r"[A-Za-z0-9_.:-]+",
    )
    connect: Literal["direct", "turn", "tunnel"] = opt(
        "direct", "How the browser reaches the desktop: direct (the node's address), turn (the "
        "site's TURN server relays WebRTC media) or tunnel (`hpcdesk tunnel` from a laptop).",
    )
    turn: Literal["none", "job"] = opt(
        "none", "TURN inside the job: job starts an unprivileged coturn next to a webrtc desktop "
        "(on a claimed TCP port, per-session credentials), so WebRTC crosses any TCP path to "
        "the node. With network.connect: tunnel it is started anyway.",
    )
    turn_relay_min: int = opt(49152, "Lowest UDP relay port of the in-job TURN.",
                              min=1024, max=65535)
    turn_relay_max: int = opt(65535, "Highest UDP relay port of the in-job TURN (each desktop "
                              "claims a block of 16 ports in this range).", min=1024, max=65535)


@dataclass
class TurnConfig:
    """The site's TURN server (site file only: only servers the site chose reach a browser)."""

    host: str | None = opt(
        None, "The site's TURN server: host name or IP address (a host name for tls). Unset: "
        "no site TURN.", pattern=r"[A-Za-z0-9_.:-]+", admin=True)
    port: int = opt(3478, "TURN server port.", min=1, max=65535, admin=True)
    protocol: Literal["udp", "tcp"] = opt(
        "udp", "How the browser reaches the TURN server (the relay itself is UDP).", admin=True)
    tls: bool = opt(False, "turns: (TURN over TLS/DTLS); the server needs a certificate for "
                    "its host name.", admin=True)
    secret_file: str | None = opt(
        None, "File holding coturn's static-auth-secret (use-auth-secret): the node mints "
        "time-limited credentials covering the job's time limit; the secret never leaves the "
        "agent. One auth method only.", admin=True)
    credentials_file: str | None = opt(
        None, "File holding long-term TURN credentials as one line USER:PASSWORD (handed to "
        "the browser as they are). One auth method only.", admin=True)
    rest_uri: str | None = opt(
        None, "TURN REST service (GET URI?service=turn&username=USER answers username, password, "
        "ttl, uris): the node asks it for credentials. One auth method only.",
        pattern=r"https?://\S+", admin=True)
    ice_transport_policy: Literal["all", "relay"] = opt(
        "all", "The browser's iceTransportPolicy: relay sends all WebRTC media through TURN.",
        admin=True)


@dataclass
class TimeoutsConfig:
    start: int = opt(300, "Seconds from job start until the desktop must answer.",
                     min=5, max=7200)
    queue: int = opt(0, "Seconds to wait in the queue before giving up (0: no limit).",
                     min=0, max=604800)
    poll_min: float = opt(1.0, "First scheduler poll interval while queued (s).",
                          min=0.2, max=60)
    idle: int = opt(0, "Seconds without any viewer connected after which the desktop ends and "
                    "its GPU is freed (0: never). Site file only.", min=0, max=604800,
                    admin=True)
    warn_before: int = opt(600, "Seconds before the job's time limit at which the desktop "
                           "warns (a message on the screen, and in `hpcdesk status`); 0: no "
                           "warning.", min=0, max=86400)
    poll_max: float = opt(32.0, "Longest scheduler poll interval while queued (s); intervals "
                          "double from poll_min, so keep it poll_min times a power of two.",
                          min=1, max=600)


@dataclass
class OodConfig:
    """What the Open OnDemand form offers (`hpcdesk ood generate`); site file only."""

    title: str = opt("GPU Desktop", "Name of the app in Open OnDemand's menus.", admin=True,
                     pattern=r"[A-Za-z0-9 _.()-]{1,64}")
    proxy: Literal["secure-rnode", "secure-node", "rnode", "node"] = opt(
        "secure-rnode", "OOD proxy route, as ood_portal.yml names it: secure-rnode "
        "(secure_rnode_uri: the portal speaks https/wss to the node, prefix stripped; "
        "recommended), secure-node (secure_node_uri, prefix kept), rnode or node (rnode_uri, "
        "node_uri: plain HTTP from the portal to the node, token and keystrokes in clear on "
        "the cluster network).", admin=True)
    proxy_uri: str | None = opt(
        None, "The route's URI in ood_portal.yml (default: /secure-rnode, /secure-node, "
        "/rnode or /node after ood.proxy).", pattern=r"(/[A-Za-z0-9_.-]+)+", admin=True)
    partitions: list[str] = opt(
        [], "Partitions offered in the form (default: scheduler.partition alone).",
        item_pattern=r"[A-Za-z0-9_.+-]+", admin=True)
    accounts: list[str] = opt(
        [], "Accounts offered in the form (empty: a free field, blank for the default).",
        item_pattern=r"[A-Za-z0-9_.+-]+", admin=True)
    gpu_types: list[str] = opt(
        [], "GPU types offered (--gres=gpu:TYPE:N); empty: no type choice.",
        item_pattern=r"[A-Za-z0-9_.+-]+", admin=True)
    max_gpus: int = opt(1, "Most GPUs a user may ask for in the form.", min=0, max=16,
                        admin=True)
    max_hours: int = opt(8, "Longest time limit offered in the form, in hours.", min=1,
                         max=720, admin=True)
    max_cores: int = opt(0, "Most CPU cores a user may ask for in the form (0: "
                         "scheduler.cpus, not a choice).", min=0, max=1024, admin=True)
    max_memory_gb: int = opt(0, "Most memory a user may ask for in the form, in GB (0: "
                             "scheduler.memory, not a choice).", min=0, max=65536, admin=True)
    resolutions: list[str] = opt(
        ["1280x720", "1920x1080", "2560x1440", "3840x2160"],
        "Screen sizes offered in the form (WIDTHxHEIGHT).", item_pattern=r"\d{3,4}x\d{3,4}",
        admin=True)


SHARE_ROLES = ("view-only", "control")


@dataclass
class PolicyConfig:
    """The site's data policy for every desktop (site file only: a user file or --set cannot
    widen it). The defaults are what a cautious HPC site expects (docs/access.md says why)."""

    clipboard: Literal["both", "in", "out", "off"] = opt(
        "both", "Clipboard direction: both, in (browser to desktop only), out (desktop to "
        "browser only) or off. Text only; every transfer is an audit line.", admin=True)
    file_transfers: Literal["none", "upload", "download", "both"] = opt(
        "none", "Files through the browser: none (use the site's own data-transfer path), "
        "upload, download or both.", admin=True)
    transfer_limit_mbps: float = opt(
        0.0, "Rate cap for browser file transfers in Mbit/s (0: no cap).", min=0, max=100000,
        admin=True)
    printing: bool = opt(False, "Hand documents printed in the desktop to the browser.",
                         admin=True)
    audit_url: str | None = opt(
        None, "Also forward every audit event (JSON, metadata only) to this URL; the session "
        "directory's audit.jsonl always gets them.", pattern=r"https?://\S+", admin=True)
    sharing: Literal["off", "view-only", "control"] = opt(
        "view-only", "What `hpcdesk share` may hand out: off, view-only links, or control "
        "links as well (someone else acting as the owner).", admin=True)
    microphone: bool = opt(
        False, "Allow the browser's microphone into the desktop (as its default recording "
        "source; asked for only while an application there records). Needs desktop.audio.",
        admin=True)
    share_max: str = opt(
        "8:00:00", "Longest a share link lives (Slurm time syntax, e.g. 2:00:00); shares "
        "always end with the desktop.", check="slurm_time", admin=True)


@dataclass
class SiteConfig:
    name: str = opt("default", "Site name shown to users.", pattern=r"[A-Za-z0-9_.-]+")
    session_root: str = opt(
        "~/.hpcdesk/sessions",
        "Where session directories live; must be on a filesystem the nodes share.",
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    desktop: DesktopConfig = field(default_factory=DesktopConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    timeouts: TimeoutsConfig = field(default_factory=TimeoutsConfig)
    ood: OodConfig = field(default_factory=OodConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)


CHECKS = {"slurm_time": slurm_time_seconds}
