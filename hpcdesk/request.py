"""DesktopRequest: what the login side asks of the node agent (request.json, no secrets).

Shared by both sides; it holds plain validated data and imports no login-side module.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcdesk.schema import DesktopConfig, NetworkConfig, PolicyConfig, RuntimeConfig, TurnConfig


@dataclass
class DesktopRequest:
    session_id: str
    user: str
    cpus: int
    gpus: int
    start_timeout: int
    desktop: DesktopConfig
    runtime: RuntimeConfig
    network: NetworkConfig
    turn: TurnConfig = field(default_factory=TurnConfig)  # the site's TURN (file paths only)
    time_limit: int = 0   # the job's time limit in seconds (TURN credentials cover it)
    warn_before: int = 0  # warn the user this many seconds before the desktop stops (0: never)
    signal_lead: int = 0  # Slurm's stop signal comes this many seconds before the time limit
    idle_timeout: int = 0  # end the desktop after this many seconds without a viewer
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # the site's data policy

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesktopRequest:
        return cls(
            session_id=data["session_id"],
            user=data["user"],
            cpus=int(data["cpus"]),
            gpus=int(data["gpus"]),
            start_timeout=int(data["start_timeout"]),
            desktop=DesktopConfig(**data["desktop"]),
            runtime=RuntimeConfig(**data["runtime"]),
            network=NetworkConfig(**data["network"]),
            turn=TurnConfig(**data.get("turn", {})),
            time_limit=int(data.get("time_limit", 0)),
            warn_before=int(data.get("warn_before", 0)),
            signal_lead=int(data.get("signal_lead", 0)),
            idle_timeout=int(data.get("idle_timeout", 0)),
            policy=PolicyConfig(**data.get("policy", {})),
        )

    @classmethod
    def load(cls, path: Path) -> DesktopRequest:
        return cls.from_dict(json.loads(path.read_text()))
