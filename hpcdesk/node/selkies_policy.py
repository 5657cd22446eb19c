"""The site's data policy and the share settings, as Selkies 2.x settings.

One mapping for every runtime that starts Selkies 2.x (the host runtime; the Debian image's
token mode): what moves between the browser and the desktop (clipboard, files, printing),
where Selkies reports each transfer (the agent's audit receiver, node/audit.py), and which
of Selkies' own sharing features are on. Sharing itself goes through `hpcdesk share` and the
token table the agent provisions (node/tokens.py); Selkies' own share links and gamepad
player links are off, since they would hand out the page's own token.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcdesk.schema import PolicyConfig

CLIPBOARD = {"both": "true", "in": "in", "out": "out", "off": "false"}
TRANSFERS = {"none": "none", "upload": "upload", "download": "download",
             "both": "upload,download"}


@dataclass(frozen=True)
class AuditSink:
    """Where Selkies posts its audit events: the agent's own loopback receiver."""

    url: str
    token: str  # a per-desktop bearer secret (Selkies' environment only, never argv)


def policy_env(policy: PolicyConfig, audit: AuditSink | None) -> dict[str, str]:
    """SELKIES_* settings for `policy` (every value explicit: Selkies' defaults allow all)."""
    env = {
        "SELKIES_ENABLE_CLIPBOARD": CLIPBOARD[policy.clipboard],
        "SELKIES_ENABLE_BINARY_CLIPBOARD": "false",
        "SELKIES_FILE_TRANSFERS": TRANSFERS[policy.file_transfers],
        "SELKIES_FILE_TRANSFER_LIMIT_MBPS": f"{policy.transfer_limit_mbps:g}",
        "SELKIES_PRINTING_ENABLED": "true" if policy.printing else "false",
        "SELKIES_UI_SIDEBAR_SHOW_SHARING": "false",
        "SELKIES_ENABLE_COLLAB": "false",
        "SELKIES_ENABLE_PLAYER2": "false",
        "SELKIES_ENABLE_PLAYER3": "false",
        "SELKIES_ENABLE_PLAYER4": "false",
        "SELKIES_ENABLE_SHARED": "false" if policy.sharing == "off" else "true",
    }
    if audit is not None:
        env["SELKIES_AUDIT_WEBHOOK_URL"] = audit.url
        env["SELKIES_AUDIT_WEBHOOK_TOKEN"] = audit.token
    return env
