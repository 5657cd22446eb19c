"""scheduler/spawn.py: the Slurm backend's command runner does what subprocess.run did for it
(output, exit codes, PATH from the given environment, a time limit that kills) and leaves
nothing behind: no process, no open file, also when interrupted."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from hpcdesk.scheduler import spawn

ENV = {"PATH": os.environ["PATH"]}


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_output_and_exit_code() -> None:
    ran = spawn.run(["sh", "-c", "echo out; echo err >&2; printf 'ä'; exit 3"], ENV, 30)
    assert ran == spawn.Ran(3, "out\nä", "err\n")


def test_large_output_on_both_streams_does_not_block() -> None:
    """More than a pipe holds on stdout and stderr at once: both are read as they come."""
    script = "head -c 300000 /dev/zero | tr '\\0' a; head -c 300000 /dev/zero | tr '\\0' b >&2"
    ran = spawn.run(["sh", "-c", script], ENV, 60)
    assert (ran.returncode, len(ran.stdout), len(ran.stderr)) == (0, 300000, 300000)


def test_the_environment_is_the_given_one_and_stdin_is_empty(tmp_path: Path) -> None:
    ran = spawn.run(["sh", "-c", "echo \"$ONLY\" $(cat | wc -c)"], {**ENV, "ONLY": "x"}, 30)
    assert ran.stdout == "x 0\n"


def test_the_command_is_found_on_the_given_path(tmp_path: Path) -> None:
    (tmp_path / "squeue").write_text("#!/bin/sh\necho fake squeue \"$@\"\n")
    (tmp_path / "squeue").chmod(0o755)
    ran = spawn.run(["squeue", "-u", "me"], {"PATH": f"{tmp_path}:/usr/bin:/bin"}, 30)
    assert ran.stdout == "fake squeue -u me\n"
    with pytest.raises(FileNotFoundError):
        spawn.run(["squeue"], {"PATH": "/nonexistent"}, 30)
    (tmp_path / "squeue").chmod(0o644)  # not executable: not found, as with execvp
    with pytest.raises(FileNotFoundError):
        spawn.run(["squeue"], {"PATH": str(tmp_path)}, 30)


def test_a_signal_is_a_negative_exit_code() -> None:
    assert spawn.run(["sh", "-c", "kill -TERM $$"], ENV, 30).returncode == -signal.SIGTERM


def test_the_time_limit_kills_the_command(tmp_path: Path) -> None:
    before = open_fds()
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    ran = spawn.run(["sh", "-c", f"echo started; echo $$ > {pidfile}; exec sleep 600"], ENV, 2)
    assert time.monotonic() - t0 < 300  # not the command's 600 s
    assert ran.returncode == 124 and "timed out" in ran.stderr
    assert ran.stdout in ("", "started\n")  # what it printed before it was cut off
    if pidfile.exists() and pidfile.read_text().strip():  # (a very slow start is cut first)
        assert not alive(int(pidfile.read_text()))  # killed and reaped, not a zombie
    assert open_fds() == before


def test_an_interrupt_kills_and_reaps_the_command(tmp_path: Path) -> None:
    """Ctrl-C while squeue runs: the interrupt goes on, the command is gone, no fd is left."""
    before = open_fds()
    pidfile = tmp_path / "pid"

    def interrupt(signum: int, frame: object) -> None:
        if pidfile.exists() and pidfile.read_text().endswith("\n"):  # the command runs
            raise KeyboardInterrupt
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # not yet: press Ctrl-C a little later

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            spawn.run(["sh", "-c", f"echo $$ > {pidfile}; exec sleep 600"], ENV, 600)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not alive(int(pidfile.read_text()))
    assert open_fds() == before


def test_no_descriptor_is_left_open() -> None:
    before = open_fds()
    for _ in range(20):
        spawn.run(["true"], ENV, 30)
    with pytest.raises(FileNotFoundError):
        spawn.run(["no-such-command-here"], ENV, 30)
    assert open_fds() == before


def test_the_command_gets_default_signal_actions() -> None:
    """Python ignores SIGPIPE; a command it starts must not inherit that (subprocess's
    restore_signals): `yes | head -1` ends because yes dies of SIGPIPE."""
    assert signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN
    ignored = spawn.run(["sh", "-c", "grep -E '^SigIgn' /proc/self/status"], ENV, 30).stdout
    mask = int(ignored.split()[1], 16)
    assert not mask & (1 << (signal.SIGPIPE - 1)) and not mask & (1 << (signal.SIGXFSZ - 1))
    assert spawn.run(["sh", "-c", "yes | head -1"], ENV, 30) == spawn.Ran(0, "y\n", "")
