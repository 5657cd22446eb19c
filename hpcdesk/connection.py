"""connection.json: how to reach a ready desktop, as the node agent publishes it.

The agent writes it (mode 0600: it holds the password or the session token) once the desktop
is ready and removes it when the desktop ends; `submit`, `status`, the OOD job and, through
`hpcdesk status --json` (its `connection`), the laptop read it. Everyone goes through
`Connection`, as request.json goes through DesktopRequest. Shared by both sides and the laptop:
imports nothing but hpcdesk.files.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcdesk.files import read_json, write_json


@dataclass(frozen=True)
class Connection:
    session: str = ""
    url: str = ""               # the desktop's URL, without any secret
    host: str = ""              # the published address and port
    port: int = 0
    path: str = "/"
    auth: str = "basic"         # desktop.auth: basic (user + password) or token
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # token mode: URL fragment only
    display: str = ""
    node: str = ""
    interface: str = "selkies"  # selkies or vnc
    encoder: str = ""           # what encodes the stream (kasmvnc for the VNC interface)
    encoder_reason: str = ""
    encoder_fallback: bool = False  # the encoder asked for could not be used (said to users)
    tls: str | None = None      # "self-signed", "site" or None (plain HTTP)
    tls_fingerprint: str | None = None
    transport: str = "websockets"
    turn_port: int | None = None    # the in-job TURN's port (forwarded by `hpcdesk tunnel`)
    sound: dict[str, Any] | None = None  # node/sound.py: on, or off and why
    started_at: float = 0.0
    ready_at: float = 0.0

    def browser_link(self) -> str:
        """The URL a browser opens: in token mode the session token rides in the fragment,
        which browsers never send to a server (nor does any proxy or log see it)."""
        return f"{self.url}#token={self.token}" if self.token else self.url

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: Path) -> None:
        write_json(path, self.to_dict(), mode=0o600)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Connection:
        """Known fields only: a file written by another hpcdesk version still reads."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: Path) -> Connection | None:
        """None while there is none (not ready yet, or ended) or it cannot be read."""
        data = read_json(path)
        try:
            return cls.from_dict(data) if data is not None else None
        except TypeError:
            return None

    def __str__(self) -> str:  # never the password or token in a log line or traceback
        return json.dumps({"session": self.session, "url": self.url, "node": self.node})
