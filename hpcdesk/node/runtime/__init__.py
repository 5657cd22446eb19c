"""Runtimes start the desktop for a DesktopPlan: `host` (processes on the node) and
`apptainer` (the desktop image). Both honour the same contract: one web port on bind_addr,
basic auth with the plan's user and password (or, with desktop.auth token, Selkies' master
token), the plan's display settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from hpcdesk.node.errors import StartError
from hpcdesk.node.procs import Child
from hpcdesk.node.selkies_policy import AuditSink
from hpcdesk.node.xorg_conf import XorgSpec
from hpcdesk.request import DesktopRequest


@dataclass
class DesktopPlan:
    request: DesktopRequest
    session_dir: Path
    workdir: Path          # node-local, private (0700), removed at the end
    bind_addr: str
    web_port: int
    user: str
    password: str
    encoder: str           # encoder.ENCODERS less auto
    encoder_threads: int
    xorg_driver: Literal["dummy", "nvidia"]
    bus_id: str | None
    tls_cert: Path | None  # HTTPS certificate and key for the web UI (None: plain HTTP)
    tls_key: Path | None
    rtc_config: Path | None = None  # Selkies' ICE configuration file (connect/rtc.py)
    gpu_uuid: str | None = None  # the bound GPU's UUID (containers find it by it)
    # desktop.auth token: Selkies' master token (kept by the agent, never published) and the
    # path the web UI is served under (desktop.url_path with {host} and {port} filled in).
    master_token: str | None = None
    url_path: str = "/"
    # The session's sound server (node/sound.py): PULSE_SERVER and PULSE_COOKIE for Selkies
    # and the desktop; empty when sound is off. `audio`/`microphone`: what Selkies is told.
    sound_env: dict[str, str] = field(default_factory=dict)
    audio: bool = False
    microphone: bool = False
    audit: AuditSink | None = None  # where Selkies posts its audit events (node/audit.py)

    def xorg_spec(self, driver: Literal["dummy", "nvidia"]) -> XorgSpec:
        """The X server the request asks for, on `driver` (nvidia: the bound GPU)."""
        d = self.request.desktop
        try:
            return XorgSpec(width=d.width, height=d.height, refresh=d.refresh, depth=d.depth,
                            dpi=d.dpi, driver=driver, bus_id=self.bus_id if driver == "nvidia"
                            else None, video_port=d.video_port)
        except ValueError as exc:
            raise StartError(str(exc)) from None


@dataclass
class Started:
    children: Sequence[Child]
    display: str
    xauthority: Path | None  # cookie file for programs the user starts on the display
    on_stop: Callable[[], None] | None = None  # releases what the runtime holds (leases)


class Runtime(Protocol):
    name: str

    def start(self, plan: DesktopPlan, timeout: float) -> Started: ...
