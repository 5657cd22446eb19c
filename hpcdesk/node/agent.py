"""The node agent (`hpcdesk node run`): started by the job script on the allocated node.

  bind the GPU (or take the software path) -> decide the encoder -> claim a port
  -> runtime starts X, desktop and web UI -> authenticated health check -> publish
  (push to the waiting client + connection.json 0600) -> supervise -> clean up.

Every phase is recorded in node.json; the final state and its reason are always written.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import secrets
import shutil
import signal
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from hpcdesk.node import address, health, tls
from hpcdesk.node.binding import bind_gpu
from hpcdesk.node.errors import StartError, Stop
from hpcdesk.node.ports import PortLease
from hpcdesk.node.procs import Child, stop_all
from hpcdesk.node.runtime import DesktopPlan, Started, get_runtime
from hpcdesk.notify import Notifier
from hpcdesk.phases import FAILED, LAUNCHING, READY, STARTING, STOPPED, STOPPING, WAITING
from hpcdesk.request import DesktopRequest
from hpcdesk.session import now, write_json

log = logging.getLogger("hpcdesk.agent")

EXIT_STOPPED = 0
EXIT_FAILED = 1
HEARTBEAT = 10.0  # seconds between "still starting" updates while waiting for the web UI


class Agent:
    def __init__(self, session_dir: Path) -> None:
        self.dir = session_dir
        self.request = DesktopRequest.load(session_dir / "request.json")
        self.notifier = Notifier(session_dir)
        self.state: dict[str, Any] = {
            "session": self.request.session_id,
            "node": os.uname().nodename,
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "agent_pid": os.getpid(),
            "phase": STARTING,
            "times": {"agent_start": now()},
        }
        self.stop_reason: str | None = None
        self.children: list[Child] = []
        self.ports: PortLease | None = None
        self.workdir: Path | None = None
        self.started: Started | None = None

    # -- state and events -------------------------------------------------------------
    def phase(self, phase: str, detail: str = "", **fields: Any) -> None:
        """Record a phase (phases.py) in node.json and push it; neither carries a secret."""
        self.state.update(fields, phase=phase, detail=detail, updated=now())
        write_json(self.dir / "node.json", self.state, mode=0o644)
        log.info("phase %s%s", phase, f": {detail}" if detail else "")
        self.notifier.send({"phase": phase, "detail": detail, "node": self.state["node"]})

    def mark(self, name: str) -> None:
        self.state["times"][name] = now()

    # -- signals ----------------------------------------------------------------------
    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        reasons = {
            signal.SIGUSR1: "time limit reached (Slurm's warning signal)",
            signal.SIGTERM: "stopped by Slurm (scancel or end of the time limit)",
            signal.SIGINT: "interrupted",
            signal.SIGHUP: "hangup",
        }
        if self.stop_reason is not None:
            return  # already stopping: a second signal must not interrupt the cleanup
        self.stop_reason = reasons.get(signal.Signals(signum), f"signal {signum}")
        raise Stop(self.stop_reason)

    def install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # -- the run ----------------------------------------------------------------------
    def run(self) -> int:
        self.install_signals()
        try:
            self.phase(STARTING, "node agent started")
            self.start()
            self.supervise()
            return EXIT_STOPPED  # supervise returns only on Stop
        except Stop as stop:
            self.finish(STOPPED, stop.reason)
            return EXIT_STOPPED
        except StartError as exc:
            self.finish(FAILED, str(exc))
            return EXIT_FAILED
        except Exception as exc:
            log.exception("node agent error")
            self.finish(FAILED, f"internal error in the node agent: {exc!r}")
            return EXIT_FAILED

    def start(self) -> dict[str, Any]:
        req = self.request
        host, bind_addr = _address(req)
        gpu = bind_gpu(req)
        self.state["gpu"] = gpu.describe()
        log.info("GPU: %s; encoder %s (%s)", gpu.summary, gpu.encoder, gpu.encoder_reason)
        self.ports = PortLease(Path(req.network.lock_dir), bind_addr,
                               req.network.port_min, req.network.port_max)
        try:
            port = self.ports.acquire()
        except RuntimeError as exc:
            raise StartError(str(exc)) from None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hpcdesk-{req.session_id}-"))
        self.state["workdir"] = str(self.workdir)  # node-local: X socket dirs, container /tmp
        user = req.desktop.user or req.user or getpass.getuser()
        password = secrets.token_urlsafe(18)
        tls_files = (tls.prepare(self.workdir, [host, bind_addr], req.desktop.https_cert,
                                 req.desktop.https_key) if req.desktop.https else None)
        plan = DesktopPlan(request=req, session_dir=self.dir, workdir=self.workdir,
                           bind_addr=bind_addr, web_port=port, user=user, password=password,
                           encoder=gpu.encoder, encoder_threads=gpu.encoder_threads,
                           xorg_driver=gpu.xorg_driver, bus_id=gpu.bus_id,
                           gpu_uuid=gpu.device.uuid if gpu.device else None,
                           tls_cert=tls_files.cert if tls_files else None,
                           tls_key=tls_files.key if tls_files else None)
        self.phase(LAUNCHING, f"starting the desktop ({req.runtime.kind} runtime)",
                   port=port, host=host)
        deadline = time.monotonic() + req.start_timeout
        started = get_runtime(req.runtime.kind).start(plan, timeout=req.start_timeout)
        self.started = started
        self.children = list(started.children)
        self.mark("desktop_launched")
        self.phase(WAITING, f"desktop on display {started.display}; waiting for the web UI",
                   display=started.display,
                   xauthority=str(started.xauthority) if started.xauthority else None)
        self.wait_healthy(plan, started, deadline)
        self.mark("healthy")
        scheme = "https" if req.desktop.https else "http"
        connection = {
            "session": req.session_id, "url": f"{scheme}://{host}:{port}/", "host": host,
            "port": port, "user": user, "password": password, "display": started.display,
            "node": self.state["node"], "interface": req.desktop.interface,
            "encoder": gpu.encoder, "encoder_reason": gpu.encoder_reason,
            "tls": tls_files.kind if tls_files else None,
            "tls_fingerprint": tls_files.fingerprint if tls_files else None,
            "started_at": self.state["times"]["agent_start"], "ready_at": now(),
        }
        write_json(self.dir / "connection.json", connection, mode=0o600)
        self.mark("published")
        # The waiting client reads the credentials from connection.json when "ready" arrives.
        self.phase(READY, f"desktop ready at {connection['url']}")
        return connection

    def wait_healthy(self, plan: DesktopPlan, started: Started, deadline: float) -> None:
        https = plan.request.desktop.https
        probe_host = plan.bind_addr if plan.bind_addr not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
        delay = 0.05
        heartbeat = time.monotonic() + HEARTBEAT
        while True:
            for child in self.children:
                if not child.alive():
                    raise StartError("the desktop failed to start: " + child.describe_exit())
            status = health.http_status(probe_host, plan.web_port, plan.user, plan.password,
                                        https=https, timeout=1.0)
            if status == 200:
                anon = health.http_status(probe_host, plan.web_port, None, None, https=https)
                if anon != 401:
                    raise StartError(f"the web UI answered {anon} without credentials (expected "
                                     "401): refusing to publish an unprotected desktop")
                return
            if time.monotonic() > heartbeat:
                heartbeat = time.monotonic() + HEARTBEAT
                self.phase(self.state["phase"], self.state.get("detail", ""))
            if time.monotonic() > deadline:
                raise StartError(
                    f"the web UI on port {plan.web_port} did not answer within "
                    f"{plan.request.start_timeout}s (last status: {status or 'no answer'})")
            time.sleep(delay)
            # A refused local connect costs microseconds: poll often, so that the desktop is
            # published within 0.1 s of answering (a 0.5 s cap lost up to 0.5 s of the start).
            delay = min(delay * 1.5, 0.1)

    def supervise(self) -> None:
        while True:
            for child in self.children:
                if not child.alive():
                    # scancel signals every process of the job: give our own SIGTERM a moment
                    # to arrive before calling this a crash.
                    time.sleep(0.5)
                    raise StartError("the desktop stopped unexpectedly: " + child.describe_exit())
            time.sleep(1.0)

    def finish(self, phase: str, reason: str) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must not be interrupted
        self.phase(STOPPING, reason)
        stop_all(self.children)
        if self.started and self.started.on_stop:
            self.started.on_stop()
        if self.ports:
            self.ports.release()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            conn = self.dir / "connection.json"
            if conn.exists():
                conn.unlink()  # the credentials are dead; don't leave them lying around
        self.mark("ended")
        self.phase(phase, reason, reason=reason)


def _address(req: DesktopRequest) -> tuple[str, str]:
    try:
        return address.reachable(req.network.address, req.network.interface,
                                 req.network.fixed_address)
    except RuntimeError as exc:
        raise StartError(str(exc)) from None


def run(session_dir: Path) -> int:
    logging.basicConfig(
        filename=str(session_dir / "agent.log"), level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return Agent(session_dir).run()

