"""THE one mapping of hpcdesk's desktop settings to Selkies 2.x settings (its `SELKIES_*`
environment), for the host runtime and for hpcdesk's images alike.

The host runtime hands `selkies_env` to the Selkies it starts; the apptainer runtime hands
`image_env` (the same values less the secrets) to the image, whose entrypoint passes every
`SELKIES_*` variable on to its Selkies unchanged and adds the secrets from files
(images/debian/entrypoint.sh). A new desktop setting that Selkies should see goes here, and
reaches both (tests/unit/test_selkies_settings.py, tests/cluster/test_image_settings.py).
"""

from __future__ import annotations

from hpcdesk.node.address import WILDCARDS
from hpcdesk.node.runtime import DesktopPlan
from hpcdesk.node.selkies_policy import policy_env

# Settings that are secrets: they reach Selkies only through its own environment (host), or
# from a 0600 file that the image's entrypoint reads (HPCDESK_PASSWORD_FILE,
# HPCDESK_MASTER_TOKEN_FILE); never through apptainer's environment or a command line.
SECRETS = ("SELKIES_BASIC_AUTH_PASSWORD", "SELKIES_MASTER_TOKEN", "SELKIES_AUDIT_WEBHOOK_TOKEN")

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


def selkies_env(plan: DesktopPlan, display: str) -> dict[str, str]:
    d = plan.request.desktop
    encoder, use_cpu = _SELKIES_ENCODER[plan.encoder]
    dpi = min(_SELKIES_DPIS, key=lambda x: abs(x - d.dpi))
    webrtc = d.transport == "webrtc"
    addr = plan.bind_addr
    if webrtc and addr not in WILDCARDS:
        addr += ",127.0.0.1"  # Selkies' webrtc mode dials itself on localhost:PORT
    env = {
        "DISPLAY": display,
        "SELKIES_ADDR": addr,
        "SELKIES_PORT": str(plan.web_port),
        **auth_env(plan),
        "SELKIES_ENCODER": encoder,
        "SELKIES_USE_CPU": use_cpu,
        "SELKIES_FRAMERATE": str(d.framerate),
        "SELKIES_VIDEO_BITRATE": str(d.video_bitrate),
        **audio_env(plan),
        "SELKIES_ENABLE_RESIZE": "true" if d.enable_resize else "false",
        "SELKIES_SCALING_DPI": str(dpi),
        "SELKIES_ENABLE_HTTPS": "true" if plan.tls_cert else "false",
        **origin_env(plan),
        # The tuning knobs measured by benchmarks/stream.py (docs/performance.md).
        "SELKIES_RATE_CONTROL_MODE": d.rate_control,
        "SELKIES_VIDEO_CRF": str(d.video_crf),
        "SELKIES_JPEG_QUALITY": str(d.jpeg_quality),
        "SELKIES_CPU_ENCODE_THREADING": "true" if threaded(d.encode_threading,
                                                          plan.encoder_threads) else "false",
        **ice_env(plan),
        **policy_env(plan.request.policy, plan.audit),  # the site's data policy, audit sink
    }
    if plan.tls_cert and plan.tls_key:
        env["SELKIES_HTTPS_CERT"], env["SELKIES_HTTPS_KEY"] = str(plan.tls_cert), str(plan.tls_key)
    return env


def audio_env(plan: DesktopPlan) -> dict[str, str]:
    """Sound and microphone (docs/sound.md): the session's own sound server (PULSE_SERVER,
    PULSE_COOKIE: paths), audio on only when it runs. Off is locked, so that the page cannot
    turn on what the site or the node does not give; the microphone is asked for only while
    an application in the desktop records (Selkies' "demand")."""
    mic = plan.audio and plan.microphone
    return {"SELKIES_AUDIO_ENABLED": "true" if plan.audio else "false|locked",
            "SELKIES_AUDIO_BITRATE": str(plan.request.desktop.audio_bitrate),
            "SELKIES_MICROPHONE_ENABLED": "true" if mic else "false|locked",
            "SELKIES_MICROPHONE_ON_START": "demand" if mic else "false",
            **plan.sound_env}


def threaded(setting: str, encoder_threads: int) -> bool:
    """desktop.encode_threading: always, never, or auto (threads only when the allocation gives
    the encoder 2 or more; on 2 CPUs one thread had lower latency and CPU, docs/performance.md)."""
    return setting == "always" or (setting == "auto" and encoder_threads >= 2)


def auth_env(plan: DesktopPlan) -> dict[str, str]:
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


def origin_env(plan: DesktopPlan) -> dict[str, str]:
    """desktop.allowed_origins (site file only): the portal origins whose pages may open the
    WebSocket (Open OnDemand's proxy does not keep the Host header). Empty: Selkies'
    same-origin rule alone. Never '*' (the schema refuses it)."""
    origins = plan.request.desktop.allowed_origins
    return {"SELKIES_ALLOWED_ORIGINS": ",".join(origins)} if origins else {}


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


def image_env(plan: DesktopPlan, display: str) -> dict[str, str]:
    """What an hpcdesk image's Selkies gets from the runtime: `selkies_env` less the secrets."""
    return {k: v for k, v in selkies_env(plan, display).items() if k not in SECRETS}
