"""The node agent's push to the waiting client, end to end in one process: what travels on the
channel carries no secret, and the waiter still gets the credentials (from connection.json).

The desktop is a FAKE runtime (a tiny HTTP server with basic auth, started like the real
runtimes start their processes); the scheduler is a FAKE that says "running". The agent, the
push channel, the health check and the waiter are the real ones.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcdesk import notify
from hpcdesk.connection import Connection
from hpcdesk.login.waiting import Progress, Waiter
from hpcdesk.node import agent as agent_module
from hpcdesk.node.procs import spawn
from hpcdesk.node.runtime import DesktopPlan, Started
from hpcdesk.request import DesktopRequest
from hpcdesk.scheduler import JobInfo, JobRef, JobState
from hpcdesk.schema import DesktopConfig, NetworkConfig, RuntimeConfig, TimeoutsConfig
from hpcdesk.session import Session

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP)
FAKE_DESKTOP = '''
import base64, http.server, os, sys
token = "Basic " + base64.b64encode(os.environ["FAKE_CREDENTIALS"].encode()).decode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.headers.get("Authorization") == token else 401)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()
'''


class FakeRuntime:
    name = "fake"

    def start(self, plan: DesktopPlan, timeout: float) -> Started:
        env = {"FAKE_CREDENTIALS": f"{plan.user}:{plan.password}"}
        child = spawn("fake desktop", [sys.executable, "-c", FAKE_DESKTOP, plan.bind_addr,
                                       str(plan.web_port)], env, plan.session_dir / "fake.log")
        return Started([child], ":99", None)


class RunningScheduler:
    """FAKE: every job is running (asked only if the push were slower than a poll)."""

    name = "fake"

    def submit(self, script: Path, cluster: str | None) -> JobRef:
        return JobRef("1")

    def query(self, jobs: Sequence[JobRef]) -> dict[JobRef, JobInfo]:
        return {j: JobInfo(j, JobState.RUNNING, nodes="n1") for j in jobs}

    def cancel(self, job: JobRef) -> None:
        pass

    def exit_code(self, job: JobRef) -> str:
        return ""


def test_no_push_frame_contains_the_password(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sdir = tmp_path / "sess01"
    sdir.mkdir(mode=0o700)
    req = DesktopRequest(
        session_id=sdir.name, user="alice", cpus=1, gpus=0, start_timeout=60,
        desktop=DesktopConfig(https=False), runtime=RuntimeConfig(),
        network=NetworkConfig(address="fixed", fixed_address="127.0.0.1"))
    (sdir / "request.json").write_text(req.to_json())
    frames: list[bytes] = []
    real_verify = notify.verify

    def recording_verify(secret: bytes, line: bytes) -> dict[str, object] | None:
        frames.append(line)  # every line the listener receives, as it came off the wire
        return real_verify(secret, line)

    monkeypatch.setattr(notify, "verify", recording_verify)
    monkeypatch.setattr(agent_module, "get_runtime", lambda kind: FakeRuntime())
    listener = notify.Listener(sdir, sdir.name, "127.0.0.1")
    agent = agent_module.Agent(sdir)
    failures: list[BaseException] = []

    def start() -> None:
        try:
            agent.start()
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=start)
    waiter = Waiter(Session(sdir), RunningScheduler(), JobRef("1"),
                    TimeoutsConfig(start=60, poll_min=10.0, poll_max=10.0),
                    Progress(lambda stage, detail: None), listener)
    try:
        thread.start()
        conn = waiter.wait()
        thread.join(timeout=30)
        assert not failures, failures
    finally:
        # finish() ignores the stop signals for good (it must not be interrupted); put this
        # process's handlers back, or every later child would inherit the ignored signals.
        handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
        agent.finish("stopped", "test finished")
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        listener.close()
    password = str(conn.password)
    assert len(password) >= 16 and conn.user == "alice"
    events = [real_verify(listener.secret, f) for f in frames]
    assert all(events), "every frame was the agent's own"
    assert [e["phase"] for e in events if e] == ["launching", "waiting", "ready"]
    leaks = [f for f in frames if password.encode() in f]
    assert not leaks, leaks
    assert not any("password" in e or "connection" in e for e in events if e)
    assert json.loads((sdir / "node.json").read_text())["phase"] == "stopped"


def started_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       desktop: DesktopConfig) -> Connection:
    """connection.json as the agent publishes it for `desktop` (a FAKE runtime, no GPU)."""
    sdir = tmp_path / "sess02"
    sdir.mkdir(mode=0o700)
    req = DesktopRequest(
        session_id=sdir.name, user="alice", cpus=2, gpus=0, start_timeout=60,
        desktop=desktop, runtime=RuntimeConfig(),
        network=NetworkConfig(address="fixed", fixed_address="127.0.0.1"))
    (sdir / "request.json").write_text(req.to_json())
    monkeypatch.setattr(agent_module, "get_runtime", lambda kind: FakeRuntime())
    agent = agent_module.Agent(sdir)
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        agent.start()
        conn = Connection.load(sdir / "connection.json")
        assert conn is not None and (sdir / "connection.json").stat().st_mode & 0o777 == 0o600
        return conn
    finally:
        agent.finish("stopped", "test finished")
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_a_vnc_session_names_its_own_encoder(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    conn = started_connection(tmp_path, monkeypatch, DesktopConfig(interface="vnc", https=False))
    assert conn.encoder == "kasmvnc" and "KasmVNC" in conn.encoder_reason
    assert conn.encoder_fallback is False


def test_an_encoder_fallback_is_said_by_submit_and_status(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """nvh264enc asked for where no NVENC session opens: x264enc, and the user is told."""
    from hpcdesk.commands.outcome import print_connection
    from hpcdesk.login.status import SessionStatus

    conn = started_connection(tmp_path, monkeypatch, DesktopConfig(encoder="nvh264enc", https=False))
    assert (conn.encoder, conn.encoder_fallback) == ("x264enc", True)
    session = Session(tmp_path / "sess02")
    print_connection(session, JobRef("5"), conn, quiet=False)
    said = capsys.readouterr().out
    assert "nvh264enc was requested but no NVIDIA GPU in this job; fell back to x264enc" in said
    conn.write(session.dir / "connection.json")
    status = SessionStatus(session, "ready", "", None, {}).as_json()
    assert status["encoder_fallback"] is True and "fell back" in status["encoder_reason"]
