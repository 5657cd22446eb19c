"""The node agent (`hpcdesk node run`): started by the job script on the allocated node.

  bind the GPU (or take the software path) -> decide the encoder -> claim a port
  -> runtime starts X, desktop and web UI -> authenticated health check -> publish
  (push to the waiting client + connection.json 0600) -> supervise -> clean up.

Every phase is recorded in node.json; the final state and its reason are always written.
"""

from __future__ import annotations

import base64
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

from hpcdesk import shares
from hpcdesk.connect import rtc
from hpcdesk.connect.turn import TurnError
from hpcdesk.connection import Connection
from hpcdesk.errors import ConfigError
from hpcdesk.files import write_json
from hpcdesk.node import address, health, janitor, jobturn, sound, tls, token_gate, viewers
from hpcdesk.node.audit import AuditReceiver
from hpcdesk.node.binding import bind_gpu
from hpcdesk.node.encoder import EncoderChoice, stream_encoder
from hpcdesk.node.errors import PortTaken, StartError, Stop
from hpcdesk.node.ports import PortLease
from hpcdesk.node.procs import (
    Child,
    become_subreaper,
    first_essential_exit,
    reap_orphans,
    spawn,
    stop_all,
)
from hpcdesk.node.runtime import DesktopPlan, Started
from hpcdesk.node.runtime.kinds import get_runtime
from hpcdesk.notify import Notifier
from hpcdesk.phases import (
    FAILED,
    HEARTBEAT,
    LAUNCHING,
    READY,
    STARTING,
    STOPPED,
    STOPPING,
    WAITING,
)
from hpcdesk.request import DesktopRequest
from hpcdesk.session import now

log = logging.getLogger("hpcdesk.agent")

EXIT_STOPPED = 0
EXIT_FAILED = 1
PORT_ATTEMPTS = 4  # ports tried when another process listens on the one picked
VIEWER_CHECK = 5.0  # seconds between looks at who is connected (idle timeout)
MAX_RESTARTS = 3  # a crashed web UI is started again this often (same port and password)


class Agent:
    tls_pin: str | None = None  # the session certificate's fingerprint (HTTPS)

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
        self.outcome = ""  # "timeout" when the time limit ended the desktop, "idle" ...
        self.warned = False
        self.web_port = 0
        self.last_viewer = 0.0  # monotonic time a viewer was last seen connected
        self.children: list[Child] = []
        self.ports: PortLease | None = None
        self.workdir: Path | None = None
        self.started: Started | None = None
        self.job_turn: jobturn.JobTurn | None = None
        self.rtc_path: Path | None = None
        self.rtc_refresh_at: float | None = None
        self.tls_pin = None
        self.viewer_auth: str | None = None  # Authorization for Selkies' list of viewers
        self.viewer_path = "/"
        self.next_viewer_check = 0.0
        self.sound: sound.Sound | None = None
        self.audit: AuditReceiver | None = None
        self.plan: DesktopPlan | None = None
        self.owner_token: str | None = None
        self.shares_seen: tuple[object, ...] | None = None  # shares.json's identity, expiry

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
        if signum == signal.SIGUSR1:
            self.outcome = "timeout"
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

    def start(self) -> Connection:
        req = self.request
        host, bind_addr = _address(req)
        gpu = bind_gpu(req)
        self.state["gpu"] = gpu.describe()
        log.info("GPU: %s; encoder %s (%s)", gpu.summary, gpu.encoder, gpu.encoder_reason)
        # In webrtc mode Selkies dials itself on localhost: the port must be free there too.
        loopback = (("127.0.0.1",) if req.desktop.transport == "webrtc"
                    and bind_addr not in address.WILDCARDS else ())
        self.ports = PortLease(bind_addr, req.network.port_min, req.network.port_max,
                               also=loopback)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"hpcdesk-{req.session_id}-"))
        self.state["workdir"] = str(self.workdir)  # node-local: X socket dirs, container /tmp
        user = req.desktop.user or req.user or getpass.getuser()
        password = secrets.token_urlsafe(18)
        # Token mode: Selkies gets a master token that never leaves this process and its
        # child; the browser gets a per-session token provisioned with it (fragment only).
        token_mode = req.desktop.auth == "token"
        master_token = secrets.token_urlsafe(32) if token_mode else None
        turn_children = self.start_job_turn(host, bind_addr)
        self.children = list(turn_children)  # stopped by finish() whatever fails next
        sound_ = self.sound = self.start_sound()
        side = [*turn_children, *([sound_.child] if sound_.child else [])]
        self.children = list(side)
        self.rtc_path = self.write_rtc(host)
        self.audit = AuditReceiver(self.dir, req.session_id, req.policy.audit_url).start()
        tls_files = (tls.prepare(self.workdir, [host, bind_addr], req.desktop.https_cert,
                                 req.desktop.https_key) if req.desktop.https else None)
        self.tls_pin = tls_files.fingerprint if tls_files else None
        deadline = time.monotonic() + req.start_timeout
        lost: PortTaken | None = None
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                port = self.ports.acquire()
            except RuntimeError as exc:
                raise StartError(f"{lost}; then {exc}" if lost else str(exc)) from None
            url_path = req.desktop.url_path.replace("{host}", host).replace("{port}", str(port))
            plan = DesktopPlan(request=req, session_dir=self.dir, workdir=self.workdir,
                               bind_addr=bind_addr, web_port=port, user=user,
                               password=password, encoder=gpu.encoder,
                               encoder_threads=gpu.encoder_threads,
                               xorg_driver=gpu.xorg_driver, bus_id=gpu.bus_id,
                               gpu_uuid=gpu.device.uuid if gpu.device else None,
                               tls_cert=tls_files.cert if tls_files else None,
                               tls_key=tls_files.key if tls_files else None,
                               master_token=master_token, url_path=url_path,
                               rtc_config=self.rtc_path, sound_env=sound_.env(),
                               audio=sound_.on,
                               microphone=sound_.on and sound_.microphone,
                               audit=self.audit.sink if self.audit else None)
            self.phase(LAUNCHING, f"starting the desktop ({req.runtime.kind} runtime)",
                       port=port, host=host)
            try:
                started = get_runtime(req.runtime.kind).start(plan, timeout=req.start_timeout)
                self.started = started
                self.children = [*side, *started.children]
                self.mark("desktop_launched")
                self.phase(WAITING,
                           f"desktop on display {started.display}; waiting for the web UI",
                           display=started.display, xauthority=str(started.xauthority)
                           if started.xauthority else None)
                session_token = self.wait_healthy(plan, started, deadline)
                self.plan, self.owner_token = plan, session_token
                break
            except PortTaken as taken:
                # A neighbour (or a desktop starting at the same moment) listens on the port:
                # it got nothing from us. Drop this start and take another port.
                log.warning("%s (attempt %d of %d)", taken, attempt, PORT_ATTEMPTS)
                lost = taken
                self.ports.refuse(port)
                self.drop_desktop(side)
                if attempt == PORT_ATTEMPTS or time.monotonic() > deadline:
                    raise StartError(f"{taken}. Tried {attempt} ports; if another user keeps "
                                     "taking them, tell your site's admins") from None
        self.mark("healthy")
        scheme = "https" if req.desktop.https else "http"
        stream = stream_encoder(req.desktop.interface, EncoderChoice(
            gpu.encoder, gpu.encoder_threads, gpu.encoder_reason, gpu.encoder_fallback))
        connection = Connection(
            session=req.session_id, url=f"{scheme}://{host}:{port}{url_path}",
            host=host, port=port, path=url_path, auth=req.desktop.auth,
            user=None if token_mode else user, password=None if token_mode else password,
            token=session_token, display=started.display,
            node=self.state["node"], interface=req.desktop.interface,
            encoder=stream.name, encoder_reason=stream.reason,
            encoder_fallback=stream.fallback,
            tls=tls_files.kind if tls_files else None,
            tls_fingerprint=tls_files.fingerprint if tls_files else None,
            transport=req.desktop.transport, sound=sound_.describe(),
            turn_port=self.job_turn.port if self.job_turn else None,
            started_at=self.state["times"]["agent_start"], ready_at=now(),
        )
        connection.write(self.dir / "connection.json")
        self.mark("published")
        self.web_port = port
        if req.desktop.interface == "selkies":
            self.viewer_path = url_path
            self.viewer_auth = (f"Bearer {session_token}" if session_token else "Basic " + (
                base64.b64encode(f"{user}:{password}".encode()).decode()))
        # The waiting client reads the credentials from connection.json when "ready" arrives.
        self.phase(READY, f"desktop ready at {connection.url}")
        return connection

    def drop_desktop(self, keep: list[Child]) -> None:
        """Stop a desktop that lost its port (the in-job TURN in `keep` stays)."""
        if self.started:
            stop_all(self.started.children, sweep=False)
            if self.started.on_stop:
                self.started.on_stop()
        self.started = None
        self.children = list(keep)

    def start_job_turn(self, host: str, bind_addr: str) -> list[Child]:
        """The in-job TURN server, when this desktop needs one (see connect/rtc.py)."""
        req = self.request
        if not rtc.wants_job_turn(req.desktop, req.network) or not self.ports or not self.workdir:
            return []
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "USER", "LANG")}
        self.job_turn = jobturn.start(
            self.workdir / "turn", self.ports, bind_addr, host,
            (req.network.turn_relay_min, req.network.turn_relay_max), env, req.runtime)
        log.info("in-job TURN on port %d, relay ports %d-%d", self.job_turn.port,
                 *self.job_turn.relay)
        return [self.job_turn.child]

    def start_sound(self) -> sound.Sound:
        """The desktop's own sound server (desktop.audio), or the reason it has none; the
        reason is published in node.json and connection.json, never a silent "on"."""
        req = self.request
        assert self.workdir is not None
        if not req.desktop.audio:
            result = sound.off("off (desktop.audio is false)")
        elif req.desktop.interface != "selkies":
            result = sound.off("off (the VNC interface carries no sound; use selkies)")
        else:
            result = sound.start(self.workdir, os.environ, self.dir / "sound.log",
                                 req.policy.microphone, command=req.runtime.sound_server,
                                 image=self.sound_in_image())
            if not result.on:
                result.reason = f"off: {result.reason}"
        self.state["sound"] = result.describe()
        log.info("sound: %s", result.reason)
        return result

    def sound_in_image(self) -> sound.InImage | None:
        """hpcdesk's images carry PulseAudio: where the node has none, the image's runs
        (the upstream images have PipeWire of their own and no hpcdesk contract for it)."""
        from hpcdesk.images import ImageError, resolve_image
        from hpcdesk.node.runtime.apptainer import ImageKind

        r = self.request.runtime
        if r.kind != "apptainer" or not r.image:
            return None
        try:
            image = resolve_image(r.image, r.image_dir)
        except ImageError:
            return None  # the runtime reports it
        return None if ImageKind.detect(image).upstream else sound.InImage(r.apptainer, image)

    def check_sound(self) -> None:
        """A sound server that died takes the sound, not the desktop: say so (status)."""
        snd = self.sound
        if not snd or not snd.on or not snd.child or snd.child.alive():
            return
        snd.on = False
        snd.reason = "off: the sound server stopped: " + snd.child.describe_exit()
        self.state["sound"] = snd.describe()
        log.warning("sound: %s", snd.reason)
        self.phase(self.state["phase"], self.state.get("detail", ""))

    def write_rtc(self, host: str) -> Path:
        """Selkies' ICE configuration file: exactly the site's servers, or none."""
        assert self.workdir is not None
        directory = self.workdir / "rtc"
        directory.mkdir(mode=0o700, exist_ok=True)
        path = directory / "rtc.json"
        self.refresh_rtc(host, path)
        return path

    def refresh_rtc(self, host: str, path: Path) -> None:
        req = self.request
        user = req.user or getpass.getuser()
        job = None
        if self.job_turn:
            job = self.job_turn.ice_server(rtc.job_turn_url(host, self.job_turn.port,
                                                            req.network.connect))
        try:
            config = rtc.plan(req.desktop, req.network, req.turn, user, req.time_limit,
                              time.time(), job)
        except (ConfigError, TurnError) as exc:
            raise StartError(f"the site's TURN server cannot be used: {exc}") from None
        config.write(path)
        self.rtc_refresh_at = (time.monotonic() + config.refresh_in
                               if config.refresh_in else None)
        log.info("ICE configuration: %d server(s), policy %s",
                 len(config.servers), config.policy)

    def wait_healthy(self, plan: DesktopPlan, started: Started, deadline: float) -> str | None:
        """Wait until the web UI is ready and protected; in token mode provision and return
        the session token. Ready never means a desktop an anonymous client can stream."""
        probe_host = "127.0.0.1" if plan.bind_addr in address.WILDCARDS else plan.bind_addr
        self.state["probe_host"] = probe_host
        delay = 0.05
        heartbeat = time.monotonic() + HEARTBEAT
        while True:
            dead = first_essential_exit(self.children)
            if dead:
                proof = health.who_listens(plan.web_port)
                if proof.foreign_uids:  # e.g. Selkies could not bind: someone else holds it
                    raise PortTaken(plan.web_port, proof.holders())
                raise StartError("the desktop failed to start: " + dead.describe_exit())
            ready, token, status = health.probe(plan, probe_host)
            if ready:
                return token
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

    def provision_tokens(self, plan: DesktopPlan, owner: str, probe_host: str) -> int | None:
        """Selkies' token table: the owner and the shares the site's policy lets live now;
        shares.state.json tells `hpcdesk share` which are live and why others are not."""
        assert plan.master_token is not None
        req = self.request
        found = shares.load(self.dir)
        t = time.time()
        live, refused = shares.granted(found, req.policy, t)
        status = health.provision_tokens(probe_host, plan.web_port,
                                         plan.url_path + "api/tokens", plan.master_token,
                                         token_gate.table(owner, live), https=req.desktop.https,
                                         pin=self.tls_pin)
        if status == 200:
            shares.write_state(self.dir, live, refused, t)
            self.shares_seen = self._shares_identity(found)
        return status

    def _shares_identity(self, found: list[shares.Share]) -> tuple[object, ...]:
        """What changes when shares.json changes or a share reaches its end."""
        try:
            st = (self.dir / shares.SHARES_FILE).stat()
            stamp: tuple[object, ...] = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            stamp = ()
        return (*stamp, shares.next_expiry(found, self.request.policy, time.time()))

    def sync_shares(self) -> None:
        """Once a second: a new, revoked or expired share reaches Selkies' token table
        (Selkies then disconnects the pages whose token left it)."""
        plan, owner = self.plan, self.owner_token
        if plan is None or owner is None or plan.master_token is None:
            return
        found = shares.load(self.dir)
        seen = self.shares_seen
        ends = seen[-1] if seen else None
        due = isinstance(ends, float) and time.time() >= ends
        if seen == self._shares_identity(found) and not due:
            return
        probe_host = plan.bind_addr if plan.bind_addr not in address.WILDCARDS else "127.0.0.1"
        status = self.provision_tokens(plan, owner, probe_host)
        if status is not None and status != 200:  # None: a restarted Selkies not up yet
            log.warning("updating the token table failed (HTTP %s); trying again", status)

    def supervise(self) -> None:
        while True:
            if self.rtc_refresh_at and time.monotonic() > self.rtc_refresh_at and self.rtc_path:
                try:
                    self.refresh_rtc(str(self.state.get("host", "")), self.rtc_path)
                except StartError as exc:  # keep the old credentials; try again in a minute
                    log.warning("renewing the TURN credentials failed: %s", exc)
                    self.rtc_refresh_at = time.monotonic() + 60
            dead = first_essential_exit(self.children)
            if dead:
                # scancel signals every process of the job: give our own SIGTERM a moment
                # to arrive before calling this a crash.
                time.sleep(0.5)
                if dead.again is None or dead.restarts >= MAX_RESTARTS:
                    more = (f" (after {dead.restarts} restarts)" if dead.restarts else "")
                    raise StartError("the desktop stopped unexpectedly: " + dead.describe_exit()
                                     + more)
                self.restart(dead)
            reap_orphans(self.children)
            self.sync_shares()
            self.check_sound()
            self.warn_time_limit()
            self.check_idle()
            time.sleep(1.0)

    def check_idle(self) -> None:
        """The site's idle timeout: no viewer connected for that long ends the desktop."""
        limit = self.request.idle_timeout
        if not limit or not self.web_port:
            return
        now_m = time.monotonic()
        if not self.last_viewer:
            self.last_viewer = now_m  # the clock starts when the desktop is ready
            return
        if now_m < self.next_viewer_check:
            return
        self.next_viewer_check = now_m + VIEWER_CHECK
        if self.viewers_now():
            self.last_viewer = now_m
            return
        if now_m - self.last_viewer > limit:
            self.outcome = "idle"
            self.stop_reason = (f"no viewer was connected for {limit}s (the site's idle "
                                "timeout); the GPU is free again")
            raise Stop(self.stop_reason)

    def viewers_now(self) -> int:
        """Pages Selkies counts as connected (authenticated clients only); a web UI without
        that list counts established connections (viewers.py)."""
        if self.viewer_auth and self.started:
            proof = health.who_listens(self.web_port)
            if proof.ours:  # the question carries the credentials: ask only our own server
                host = str(self.state.get("probe_host") or "127.0.0.1")
                count = viewers.authenticated(host, self.web_port, self.viewer_path,
                                              self.viewer_auth, self.request.desktop.https,
                                              self.tls_pin)
                if count is not None:
                    return count
            elif proof.foreign_uids:
                log.warning("port %d is held by %s: Selkies is not listening there",
                            self.web_port, proof.holders())
                return 0
        return viewers.connected(self.web_port)

    def warn_time_limit(self) -> None:
        """Once, `warn_before` seconds before the desktop stops: in node.json (so `hpcdesk
        status` shows it) and as a message on the desktop itself."""
        req = self.request
        if self.warned or not req.time_limit or not req.warn_before:
            return
        left = seconds_left(req, self.state["times"]["agent_start"], time.time())
        if left > req.warn_before:
            return
        self.warned = True
        msg = (f"This desktop ends in about {max(1, round(left / 60))} min (the job's time "
               "limit): save your work.")
        self.state["warning"] = {"at": now(), "message": msg}
        self.phase(READY, msg)
        xmessage = shutil.which("xmessage")
        if xmessage and self.started:
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                   "DISPLAY": self.started.display}
            if self.started.xauthority:
                env["XAUTHORITY"] = str(self.started.xauthority)
            with contextlib.suppress(StartError):
                self.children.append(spawn("time-limit warning", [
                    xmessage, "-center", "-timeout", str(req.warn_before), msg], env, None,
                    essential=False))

    def restart(self, dead: Child) -> None:
        """Start a crashed child again; the URL and the password stay valid."""
        assert dead.again is not None
        why = dead.describe_exit().split(";")[0]
        log.warning("%s; starting it again (%d of %d)", why, dead.restarts + 1, MAX_RESTARTS)
        fresh = dead.again()
        fresh.restarts = dead.restarts + 1
        self.children[self.children.index(dead)] = fresh
        # A restarted Selkies starts with an empty token table (and serves no one until it
        # has one): the next supervise ticks provision the owner's token and the shares again.
        self.shares_seen = None
        self.state.setdefault("restarts", []).append({"child": dead.name, "why": why,
                                                      "at": now()})
        self.phase(READY, f"{why}; started again ({fresh.restarts} of {MAX_RESTARTS}), same "
                   "URL and password")

    def finish(self, phase: str, reason: str) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # cleanup must not be interrupted
        self.phase(STOPPING, reason)
        stop_all(self.children)
        if self.started and self.started.on_stop:
            self.started.on_stop()
        if self.ports:
            self.ports.release()
        if self.job_turn:
            self.job_turn.release()
        if self.audit:
            self.audit.stop()
        if self.owner_token:  # the desktop is gone, and every share with it
            ended = shares.read_state(self.dir).get("refused", {})  # revoked, expired...
            shares.write_state(self.dir, [], {
                s.id: ended.get(s.id) or ("revoked" if s.revoked else "the desktop ended")
                for s in shares.load(self.dir)}, time.time())
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(OSError):
            conn = self.dir / "connection.json"
            if conn.exists():
                conn.unlink()  # the credentials are dead; don't leave them lying around
        self.mark("ended")
        self.phase(phase, reason, reason=reason, outcome=self.outcome or phase)


def seconds_left(req: DesktopRequest, started: float, at: float) -> float:
    """Seconds until the desktop really stops: Slurm's early stop signal (`--signal
    B:USR1@signal_lead`) ends it signal_lead seconds before the job's time limit."""
    return started + req.time_limit - req.signal_lead - at


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
    agent = Agent(session_dir)
    # Before the subreaper and any child: the janitor must not become the agent's descendant.
    janitor.start(session_dir, agent.request.session_id)
    # Daemons that double-fork out of the desktop are reparented to the agent, so its sweep
    # finds and ends them (procs.py).
    become_subreaper()
    return agent.run()

