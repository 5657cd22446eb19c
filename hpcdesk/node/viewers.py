"""Is anybody looking? Viewers are established TCP connections to the desktop's web port.

Read from /proc/net/tcp and tcp6 of the node's network namespace (the agent's own), so it
sees every browser, tunnel or proxy connection to the port and costs no process or RPC.
"""

from __future__ import annotations

from pathlib import Path

ESTABLISHED = "01"


def connected(port: int, proc_net: Path = Path("/proc/net")) -> int:
    """How many established connections have `port` as their local port."""
    count = 0
    for name in ("tcp", "tcp6"):
        try:
            lines = (proc_net / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == ESTABLISHED and (
                    int(fields[1].rsplit(":", 1)[1], 16) == port):
                count += 1
    return count
