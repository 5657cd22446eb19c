"""`hpcdesk submit --connect tunnel` prints the exact laptop command."""

from __future__ import annotations

import getpass
import socket
import sys
from pathlib import Path

import pytest

from hpcdesk.commands import laptop_hint


def test_command_names_session_login_node_and_site(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(laptop_hint, "remote_command", lambda: None)
    cmd = laptop_hint.laptop_command("k3x9fq", "dev site")
    assert cmd == (f"hpcdesk tunnel k3x9fq --login {getpass.getuser()}@"
                   f"{laptop_hint.login_name()} --site 'dev site' --open")
    assert laptop_hint.login_name() in (socket.getfqdn(), socket.gethostname())
    assert not laptop_hint.login_name().startswith("localhost")


def test_remote_command_when_not_on_sshs_default_path(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    exe = tmp_path / "venv dir/bin/hpcdesk"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(exe.with_name("python")))
    cmd = laptop_hint.laptop_command("k3x9fq", None, login="alice@login1")
    assert cmd == (f"hpcdesk tunnel k3x9fq --login alice@login1 --remote-command '{exe}' "
                   "--open")
    monkeypatch.setattr(laptop_hint, "SSH_DEFAULT_PATH", str(exe.parent))
    assert "--remote-command" not in laptop_hint.laptop_command("k3x9fq", None)


def test_ready_output_names_the_laptop_command(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hpcdesk.commands.outcome import print_connection
    from hpcdesk.scheduler import JobRef
    from hpcdesk.session import create

    session = create(tmp_path)
    from hpcdesk.connection import Connection

    conn = Connection(url="https://gpu01:4000/", user="al", password="pw", node="gpu01")
    cmd = f"hpcdesk tunnel {session.id} --login al@login1 --open"
    print_connection(session, JobRef("42", None), conn, False, 1.0, cmd)
    out = capsys.readouterr().out
    assert f"on your laptop (this URL is for the cluster's network only):\n            {cmd}\n" \
        in out
    print_connection(session, JobRef("42", None), conn, True, 1.0, cmd)
    assert json.loads(capsys.readouterr().out)["laptop_command"] == cmd
    print_connection(session, JobRef("42", None), conn, True)
    assert "laptop_command" not in json.loads(capsys.readouterr().out)


@pytest.mark.usefixtures("isolated_config")
def test_json_submit_carries_the_laptop_command_in_the_document_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`submit --json` (what `hpcdesk tunnel --submit` runs on the login node) prints no
    "on your laptop" line, which the tunnel would pass on, naming a host the laptop may not
    resolve and dropping its jump host; the command is in the JSON (FAKE scheduler)."""
    import json

    from hpcdesk import cli
    from hpcdesk.commands import submit
    from hpcdesk.scheduler import JobRef

    class Scheduler:
        def submit(self, script: Path, cluster: str | None) -> JobRef:
            return JobRef("42", cluster)

        def partitions(self, cluster: str | None) -> None:
            return None  # the scheduler cannot say: left to sbatch

    monkeypatch.setattr(submit, "scheduler_for", lambda loaded: Scheduler())
    code = cli.main(["submit", "--no-wait", "--json", "--connect", "tunnel",
                     "--set", f"session_root={tmp_path / 'sessions'}"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "hpcdesk tunnel" in json.loads(out)["laptop_command"]
    assert "on your laptop" not in err and "hpcdesk tunnel" not in err, err
