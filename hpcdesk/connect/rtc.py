"""The WebRTC ICE configuration of one desktop: the file behind Selkies' `--rtc-config-json`.

The agent writes this file for every Selkies desktop, in both transports: 0600, owned by the
desktop's user (Selkies trusts no other owner), in the session's node-local directory, and
rewritten in place (atomic rename, which Selkies' file watcher follows) when REST credentials
are renewed. It lists exactly the ICE servers the site configured, or none, so Selkies' own
defaults (a public TURN relay and Google/Cloudflare STUN) never reach a browser.

Which servers, for desktop.transport: webrtc, by network.connect:
- direct: none from outside. The browser reaches the node's own (host) candidates. With
  network.turn: job, the in-job TURN at the node's published address,
  `turn:<host>:<turn_port>?transport=tcp`.
- turn: the site's TURN server (required; a config error otherwise) with credentials derived
  on the node (hpcdesk.connect.turn), plus the in-job TURN at the node's address with
  network.turn: job.
- tunnel: the in-job TURN, started for every webrtc desktop, as
  `turn:127.0.0.1:<turn_port>?transport=tcp`. This is the contract with the laptop tunnel
  (`hpcdesk tunnel`): the agent publishes `transport` and `turn_port` in connection.json and
  in the ready event, the tunnel forwards the laptop's 127.0.0.1:<turn_port> to the node's
  same port, and the in-job TURN listens on the node's address and on its loopback, so the
  one URL works for the browser on the laptop and for Selkies on the node.
For desktop.transport: websockets the list is empty and the UI cannot switch to webrtc.
iceTransportPolicy is turn.ice_transport_policy when a TURN server is listed, else "all".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hpcdesk.connect.turn import IceServer, configured, server_url, site_servers
from hpcdesk.files import atomic_write
from hpcdesk.schema import DesktopConfig, NetworkConfig, SiteConfig, TurnConfig


def wants_job_turn(desktop: DesktopConfig, network: NetworkConfig) -> bool:
    """Whether the agent starts a TURN server inside the job."""
    return desktop.transport == "webrtc" and (network.turn == "job" or network.connect == "tunnel")


def config_problems(cfg: SiteConfig) -> list[tuple[str, str]]:
    """(key, message) for a transport/connect/TURN combination that cannot work."""
    out: list[tuple[str, str]] = []
    webrtc = cfg.desktop.transport == "webrtc"
    if cfg.network.connect == "turn":
        if not configured(cfg.turn):
            out.append(("network.connect", "'turn' needs the site's TURN server, and this site "
                        "configures none (turn.host); use --connect direct or tunnel, or ask "
                        "your admin"))
        elif not webrtc:
            out.append(("network.connect", "'turn' relays WebRTC media: also set "
                        "desktop.transport: webrtc (--set desktop.transport=webrtc)"))
    if (webrtc and cfg.turn.ice_transport_policy == "relay"
            and not (cfg.network.connect == "turn" or wants_job_turn(cfg.desktop, cfg.network))):
        # Named as network.connect: where it was given (--connect), that is what to change.
        out.append(("network.connect", f"'{cfg.network.connect}' cannot carry this site's "
                    "desktops: turn.ice_transport_policy is 'relay' (all WebRTC media through "
                    "a TURN server); use --connect turn or --connect tunnel (or set "
                    "network.turn: job)"))
    return out


def job_turn_url(published_host: str, port: int, connect: str) -> str:
    host = "127.0.0.1" if connect == "tunnel" else published_host
    return server_url(host, port, "tcp", False)


@dataclass
class RtcConfig:
    servers: list[IceServer]
    policy: Literal["all", "relay"]
    lifetime: int               # seconds the credentials are valid
    refresh_in: int | None      # seconds until REST credentials must be fetched again

    def document(self) -> dict[str, Any]:
        return {
            "lifetimeDuration": f"{self.lifetime}s",
            "iceServers": [s.to_json() for s in self.servers],
            "blockStatus": "NOT_BLOCKED",
            "iceTransportPolicy": self.policy,
        }

    def write(self, path: Path) -> None:
        atomic_write(path, json.dumps(self.document(), indent=1) + "\n", mode=0o600)


def plan(desktop: DesktopConfig, network: NetworkConfig, turn: TurnConfig, user: str,
         time_limit: int, now: float, job_turn: IceServer | None = None) -> RtcConfig:
    """The ICE servers for one desktop (ConfigError/TurnError from the site's TURN)."""
    lifetime = max(time_limit, 60)
    if desktop.transport != "webrtc":
        return RtcConfig([], "all", lifetime, None)
    servers: list[IceServer] = []
    refresh: int | None = None
    if network.connect == "turn":
        servers, refresh = site_servers(turn, user, lifetime, now)
    if job_turn is not None:
        servers.append(job_turn)
    policy = turn.ice_transport_policy if servers else "all"
    return RtcConfig(servers, policy, lifetime, refresh)
