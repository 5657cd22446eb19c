"""The agent's children: which exits end the desktop, and daemons that double-fork away."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcdesk.node.procs import first_essential_exit, spawn, stop_all


@pytest.mark.reliability("D2 an autostart program exits",
                          "logged; the desktop stays up")
def test_only_essential_exits_end_the_desktop(tmp_path: Path) -> None:
    log = tmp_path / "desktop.log"
    server = spawn("x server", ["sleep", "60"], {}, log)
    launcher = spawn("autostart[0] sh -c true", ["sh", "-c", "true"], {}, log, essential=False)
    try:
        launcher.proc.wait(10)
        assert first_essential_exit([server, launcher]) is None  # a launcher that exits is fine
        assert launcher.exit_logged
        server.proc.kill()
        server.proc.wait(10)
        dead = first_essential_exit([server, launcher])
        assert dead is server and "signal 9" in dead.describe_exit()
    finally:
        stop_all([server, launcher], grace=1)


# Runs in its own process: it becomes a subreaper and must end a daemon that double-forked
# (setsid -f: fork, new session, parent exits) out of a child it started.
SUBREAPER = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from hpcdesk.node.procs import become_subreaper, descendants, reap_orphans, spawn, stop_all
    assert become_subreaper()
    marker = sys.argv[1]
    launcher = spawn("autostart", ["setsid", "-f", "sleep", marker], {"PATH": "/usr/bin:/bin"},
                     None, essential=False)
    launcher.proc.wait(10)
    def daemon():
        for pid in descendants(os.getpid()):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\\0")[:2] == [
                        b"sleep", marker.encode()]:
                    return pid
            except OSError:
                pass
        return None
    deadline = time.monotonic() + 20
    while daemon() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = daemon()
    print("found", pid, flush=True)
    stop_all([launcher], grace=1)
    reap_orphans([launcher])
    print("alive" if Path(f"/proc/{pid}").exists() else "gone", flush=True)
''')


@pytest.mark.reliability("D7 a daemon double-forks out of the desktop",
                          "the subreaper agent finds and ends it")
def test_double_forked_daemon_is_found_and_ended() -> None:
    marker = str(86400 + os.getpid() % 10000)
    proc = subprocess.run([sys.executable, "-c", SUBREAPER, marker], capture_output=True,
                          text=True, timeout=60, check=False)
    lines = proc.stdout.split("\n")
    assert proc.returncode == 0, proc.stderr
    assert lines[0] != "found None", "the double-forked daemon escaped the agent's tree"
    if lines[1] != "gone":
        os.kill(int(lines[0].split()[1]), 9)  # the daemon this test started, by its pid
    assert lines[1] == "gone"
