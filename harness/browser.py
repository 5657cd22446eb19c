"""A real headless Chromium, driven over the DevTools protocol, that watches a page live.

`--screenshot` runs on virtual time and fires before a video stream has started; this opens
the page and takes real-time screenshots until a condition holds (or a deadline passes).

`watch()` is the one-shot form. `Chromium` keeps one browser and page open across several
steps (open, wait until the desktop shows, do something elsewhere, wait again), and
can run inside a network namespace (`netns="NAME"`, /run/netns/NAME): the browser is started
there with nsenter, and its DevTools connection is made from a thread that joined the same
namespace, so it sees exactly the network a laptop there would. `open()` can install a
script before the page's own (RTC_SPY records the page's RTCPeerConnections, so a test reads
the ICE configuration the browser really uses) and answer the site's login once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--ignore-certificate-errors", "--remote-debugging-port=0",
         "--autoplay-policy=no-user-gesture-required"]  # WebRTC video starts without a click

# Installed before any page script: remembers every RTCPeerConnection the page makes.
RTC_SPY = """(() => {
  const Orig = window.RTCPeerConnection;
  if (!Orig || Orig.__hpcdeskSpy) return;
  const made = [];
  function Spy(...args) { const pc = new Orig(...args); made.push(pc); return pc; }
  Spy.prototype = Orig.prototype;
  Object.setPrototypeOf(Spy, Orig);
  Spy.__hpcdeskSpy = true;
  window.RTCPeerConnection = Spy;
  window.__hpcdeskPeerConfigs = () => made.map(pc => {
    const c = pc.getConfiguration();
    return {iceServers: c.iceServers, iceTransportPolicy: c.iceTransportPolicy,
            state: pc.connectionState};
  });
})();"""
# Installed before any page script: taps every sound the page plays with an AnalyserNode, at
# the two places it can come from: a Web Audio node connected to the speakers (Selkies'
# websockets client decodes Opus and plays it through an AudioWorklet) and every remote audio
# track of an RTCPeerConnection (webrtc). `window.__hpcdeskAudio()` reads each tap now: its
# RMS level and the frequency of its loudest FFT bin.
AUDIO_SPY = """(() => {
  if (window.__hpcdeskAudio) return;
  const taps = [];
  const connect = AudioNode.prototype.connect;
  const analyse = (ctx, node, kind) => {
    const a = ctx.createAnalyser();
    a.fftSize = 8192;
    a.smoothingTimeConstant = 0;
    connect.call(node, a);
    taps.push({ctx, a, kind});
  };
  AudioNode.prototype.connect = function (dest, ...rest) {
    const out = connect.call(this, dest, ...rest);
    if (dest instanceof AudioDestinationNode) analyse(this.context, this, "webaudio");
    return out;
  };
  const Orig = window.RTCPeerConnection;
  if (Orig) {
    function Spy(...args) {
      const pc = new Orig(...args);
      pc.addEventListener("track", (e) => {
        if (e.track.kind !== "audio") return;
        const stream = new MediaStream([e.track]);
        const el = new Audio(); el.muted = true; el.srcObject = stream; el.play().catch(() => {});
        const ctx = new AudioContext();
        analyse(ctx, ctx.createMediaStreamSource(stream), "webrtc");
      });
      return pc;
    }
    Spy.prototype = Orig.prototype;
    Object.setPrototypeOf(Spy, Orig);
    window.RTCPeerConnection = Spy;
  }
  window.__hpcdeskAudio = () => taps.map(({ctx, a, kind}) => {
    const t = new Float32Array(a.fftSize);
    a.getFloatTimeDomainData(t);
    let sum = 0;
    for (const x of t) sum += x * x;
    const f = new Float32Array(a.frequencyBinCount);
    a.getFloatFrequencyData(f);
    let best = 1;
    for (let i = 1; i < f.length; i++) if (f[i] > f[best]) best = i;
    return {kind, state: ctx.state, rms: Math.sqrt(sum / t.length),
            peakHz: best * ctx.sampleRate / a.fftSize};
  });
})();"""
AUDIO_LEVELS = "JSON.stringify(window.__hpcdeskAudio ? window.__hpcdeskAudio() : null)"
# Chromium's fake capture device (a periodic beep) as the microphone, granted without a prompt.
FAKE_MICROPHONE = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
PEER_CONFIGS = "JSON.stringify(window.__hpcdeskPeerConfigs ? window.__hpcdeskPeerConfigs() : null)"
CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """fn() in a thread that joined network namespace `netns` (or here, if None)."""
    if netns is None:
        return fn()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns {netns}")
            finally:
                os.close(fd)
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]


class _Page:
    """One DevTools connection to the page; `call` sends a command and awaits its answer."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.counter = 0

    async def call(self, method: str, **params: object) -> dict[str, object]:
        self.counter += 1
        await self.ws.send_json({"id": self.counter, "method": method, "params": params})
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("id") == self.counter:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return dict(data.get("result", {}))
        raise RuntimeError("DevTools connection closed")


async def _with_page(ws_url: str, steps: Callable[[_Page], Any]) -> Any:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        return await steps(_Page(ws))


async def _until(page: _Page, out: Path, ok: Callable[[Path], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        await asyncio.sleep(1.0)
        shot = await page.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(str(shot["data"])))
        if ok(out):
            return True
        if time.monotonic() > deadline:
            return False


class Chromium:
    """Headless Chromium with one page, optionally in a network namespace."""

    def __init__(self, netns: str | None = None, window: tuple[int, int] = (1280, 720),
                 flags: tuple[str, ...] = ()) -> None:
        self.netns = netns
        self.window = window
        self.flags = flags
        self.proc: subprocess.Popen[str] | None = None
        self.page_ws = ""
        self._profile: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Chromium:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if not chromium:
            raise RuntimeError("chromium is not installed (apt-get install chromium)")
        self._profile = tempfile.TemporaryDirectory(prefix="hpcdesk-chromium-",
                                                    ignore_cleanup_errors=True)
        prefix = ["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []
        self.proc = subprocess.Popen(
            [*prefix, chromium, *FLAGS, *self.flags,
             f"--window-size={self.window[0]},{self.window[1]}",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        try:
            assert self.proc.stderr is not None
            ws_url = ""
            start = time.monotonic()
            while time.monotonic() - start < 30:
                line = self.proc.stderr.readline()
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m:
                    ws_url = m.group(1)
                    break
            if not ws_url:
                raise RuntimeError("chromium did not open its DevTools port")
            # Keep reading its stderr (the browser and its helpers share the pipe): once 64 KiB
            # of log lines were unread, the next write would block and freeze the page.
            threading.Thread(target=_drain, args=(self.proc.stderr,), daemon=True).start()
            self.page_ws = in_netns(self.netns, lambda: asyncio.run(_page_target(ws_url)))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # The browser and its helper processes (one group): stop them all before the profile
        # directory is removed.
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            self.proc = None
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    def _run(self, steps: Callable[[_Page], Any]) -> Any:
        return in_netns(self.netns, lambda: asyncio.run(_with_page(self.page_ws, steps)))

    def open(self, url: str, init_script: str | None = None,
             login: tuple[str, str] | None = None) -> None:
        """Navigate to `url` exactly as given. `init_script` runs in every new document before
        the page's scripts. `login` (user, password) is typed into the browser's login prompt
        the way a person answers it (DevTools' Fetch.authRequired, the prompt's own hook):
        once, after which the browser sends it with every request to the site. The URL never
        carries the credentials (that would make the page's own fetch() calls fail: the
        Selkies client then silently connects without its ICE servers)."""
        async def loaded(page: _Page) -> None:
            deadline = time.monotonic() + 30
            while True:
                got = await page.call("Runtime.evaluate", expression="document.readyState",
                                      returnByValue=True)
                if _value(got) == "complete":
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not load")
                await asyncio.sleep(0.2)

        async def steps(page: _Page) -> None:
            await page.call("Page.enable")
            await page.call("Runtime.enable")
            if init_script:
                await page.call("Page.addScriptToEvaluateOnNewDocument", source=init_script)
            if init_script or login:  # both live only while this DevTools session does
                await _navigate(page, url, login)
                await loaded(page)
            else:
                await page.call("Page.navigate", url=url)
        self._run(steps)

    def evaluate(self, expression: str) -> Any:
        async def steps(page: _Page) -> Any:
            got = await page.call("Runtime.evaluate", expression=expression,
                                  returnByValue=True, awaitPromise=True)
            return _value(got)
        return self._run(steps)

    def type_text(self, text: str) -> None:
        """Keys as a person types them on the page (trusted key events; "\r" is Enter)."""
        async def steps(page: _Page) -> None:
            for ch in text:
                key = {"\r": ("Enter", "Enter", 13)}.get(ch, (ch, f"Key{ch.upper()}",
                                                               ord(ch.upper())))
                common = {"key": key[0], "code": key[1], "windowsVirtualKeyCode": key[2]}
                await page.call("Input.dispatchKeyEvent", type="keyDown", text=ch, **common)
                await page.call("Input.dispatchKeyEvent", type="keyUp", **common)
        self._run(steps)

    def click(self, x: int, y: int) -> None:
        """A left click at page coordinates (trusted mouse events)."""
        async def steps(page: _Page) -> None:
            await page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
            for kind in ("mousePressed", "mouseReleased"):
                await page.call("Input.dispatchMouseEvent", type=kind, x=x, y=y,
                                button="left", clickCount=1)
        self._run(steps)

    def paste(self, text: str, at: tuple[int, int] = (300, 300)) -> None:
        """What a person does to paste: `text` on the browser's clipboard (the page's origin
        may read it), a click into the page, Ctrl+V."""
        async def steps(page: _Page) -> None:
            got = await page.call("Runtime.evaluate", expression="location.origin",
                                  returnByValue=True)
            await page.call("Browser.grantPermissions", origin=_value(got), permissions=[
                "clipboardReadWrite", "clipboardSanitizedWrite"])
            await page.call("Emulation.setFocusEmulationEnabled", enabled=True)
            wrote = await page.call("Runtime.evaluate", awaitPromise=True, returnByValue=True,
                                    expression=f"navigator.clipboard.writeText({json.dumps(text)})"
                                               ".then(() => 'ok', e => String(e))")
            if _value(wrote) != "ok":
                raise RuntimeError(f"the browser's clipboard refused the text: {wrote}")
            for kind in ("mousePressed", "mouseReleased"):
                await page.call("Input.dispatchMouseEvent", type=kind, x=at[0], y=at[1],
                                button="left", clickCount=1)
            ctrl_v = {"key": "v", "code": "KeyV", "windowsVirtualKeyCode": 86, "modifiers": 2}
            await page.call("Input.dispatchKeyEvent", type="keyDown", commands=["paste"],
                            **ctrl_v)
            await page.call("Input.dispatchKeyEvent", type="keyUp", **ctrl_v)
        self._run(steps)

    def choose_file(self, path: Path, selector: str = "#globalFileInput") -> None:
        """A file chosen in the page's file picker (`selector`), as a person picks one: the
        page's own change handler does the rest (Selkies: its upload)."""
        async def steps(page: _Page) -> None:
            doc = await page.call("DOM.getDocument")
            root = doc["root"]
            assert isinstance(root, dict)
            found = await page.call("DOM.querySelector", nodeId=root["nodeId"],
                                    selector=selector)
            if not found.get("nodeId"):
                raise RuntimeError(f"the page has no {selector}")
            await page.call("DOM.setFileInputFiles", files=[str(path)],
                            nodeId=found["nodeId"])
        self._run(steps)

    @property
    def pids(self) -> list[int]:
        """The browser's processes (its own session: renderer, GPU, network helpers)."""
        if self.proc is None:
            return []
        sid = self.proc.pid
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[3]) == sid:
                        found.append(int(entry))
        return found

    def peer_configs(self) -> list[dict[str, Any]] | None:
        """The page's RTCPeerConnection configurations (None: RTC_SPY was not installed)."""
        got = json.loads(str(self.evaluate(PEER_CONFIGS)))
        return None if got is None else list(got)

    def audio_levels(self) -> list[dict[str, Any]] | None:
        """What the page plays right now, per tap (None: AUDIO_SPY was not installed):
        kind (webaudio | webrtc), state, rms, peakHz."""
        got = json.loads(str(self.evaluate(AUDIO_LEVELS)))
        return None if got is None else list(got)

    def wait_until(self, expression: str, timeout: float = 60.0) -> bool:
        """Poll a JavaScript expression until it is truthy (True) or the timeout (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.evaluate(expression):
                return True
            time.sleep(0.25)
        return False

    def wait_for(self, out: Path, ok: Callable[[Path], bool], timeout: float = 120.0) -> bool:
        """Screenshot into `out` every second until ok(out) (True) or the timeout (False)."""
        return bool(self._run(lambda page: _until(page, out, ok, timeout)))


async def _navigate(page: _Page, url: str, login: tuple[str, str] | None) -> None:
    """Navigate until the site's page has loaded (past a launcher page on file: that forwards
    to it), with the browser's login prompt answered once when `login` is given
    (Fetch.authRequired -> ProvideCredentials; the hook is removed after)."""
    if login:
        await page.call("Fetch.enable", handleAuthRequests=True,
                        patterns=[{"urlPattern": "*"}])
    page.counter += 1
    nav_id = page.counter
    await page.ws.send_json({"id": nav_id, "method": "Page.navigate", "params": {"url": url}})
    deadline = time.monotonic() + 60
    navigated = landed = False
    while time.monotonic() < deadline:
        msg = await page.ws.receive(timeout=deadline - time.monotonic())
        data = json.loads(msg.data)
        method, params = data.get("method"), data.get("params", {})
        reply: dict[str, object] | None = None
        if method == "Fetch.requestPaused":
            reply = {"method": "Fetch.continueRequest",
                     "params": {"requestId": params["requestId"]}}
        elif method == "Fetch.authRequired" and login:
            reply = {"method": "Fetch.continueWithAuth", "params": {
                "requestId": params["requestId"], "authChallengeResponse": {
                    "response": "ProvideCredentials", "username": login[0],
                    "password": login[1]}}}
        elif data.get("id") == nav_id:
            navigated = True
        elif method == "Page.frameNavigated" and not params["frame"].get("parentId"):
            landed = not str(params["frame"].get("url", "")).startswith("file:")
        elif method == "Page.loadEventFired" and navigated and landed:
            break  # a launcher page (file:) that forwards to the site loads first
        if reply is not None:
            page.counter += 1
            await page.ws.send_json({"id": page.counter, **reply})
    if login:
        await page.call("Fetch.disable")


def _value(evaluated: dict[str, object]) -> Any:
    result = evaluated.get("result")
    return result.get("value") if isinstance(result, dict) else None


def watch(url: str, out: Path, ok: Callable[[Path], bool], timeout: float = 120.0,
          netns: str | None = None, login: tuple[str, str] | None = None) -> bool:
    """Open `url` in headless Chromium (answering its login prompt with `login`); screenshot
    into `out` until ok(out) or timeout."""
    with Chromium(netns) as browser:
        browser.open(url, login=login)
        return browser.wait_for(out, ok, timeout)


def _drain(stream: Any) -> None:
    """Read a pipe to its end, discarding what it says."""
    with contextlib.suppress(OSError, ValueError):
        for _line in stream:
            pass


async def _page_target(browser_ws: str) -> str:
    base = browser_ws.split("/devtools/")[0].replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        for _ in range(300):  # 30 s: a busy machine may take a while to open the first page
            async with http.get(f"{base}/json/list") as resp:
                targets = await resp.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)
    raise RuntimeError("chromium has no page target")
