"""A real headless Chromium, driven over the DevTools protocol, that watches a page live.

`--screenshot` runs on virtual time and fires before a video stream has started; this opens
the page and takes real-time screenshots until a condition holds (or a deadline passes).
DevTools runs over a pipe (`--remote-debugging-pipe`), not a TCP port, so the browser can run
inside another network namespace (a "laptop" that reaches only what a test allows) while the
test drives it from here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--ignore-certificate-errors", "--window-size=1280,720", "--remote-debugging-pipe",
         "--autoplay-policy=no-user-gesture-required"]  # WebRTC video starts without a click

# Installed before any page script: remembers every RTCPeerConnection the page makes, so a
# test can read the configuration the browser really uses (getConfiguration()).
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
PEER_CONFIGS = "JSON.stringify(window.__hpcdeskPeerConfigs ? window.__hpcdeskPeerConfigs() : null)"


class DevTools:
    """The browser end of --remote-debugging-pipe: NUL-separated JSON on fds 3 (in) and 4."""

    def __init__(self, to_browser: int, from_browser: int) -> None:
        self.w, self.r = to_browser, from_browser
        self.buf = b""
        self.counter = 0
        self.session: str | None = None

    def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self.counter += 1
        msg: dict[str, Any] = {"id": self.counter, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buf:
                raw, self.buf = self.buf.split(b"\0", 1)
                data = json.loads(raw)
                if data.get("id") == self.counter:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return dict(data.get("result", {}))
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise RuntimeError(f"DevTools: no answer to {method} within {timeout}s")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("DevTools pipe closed (chromium exited)")
            self.buf += chunk

    def attach_page(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            targets = self.call("Target.getTargets")["targetInfos"]
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                got = self.call("Target.attachToTarget", targetId=pages[0]["targetId"],
                                flatten=True)
                self.session = str(got["sessionId"])
                return
            time.sleep(0.1)
        raise RuntimeError("chromium has no page target")

    def evaluate(self, expression: str) -> Any:
        got = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        return got.get("result", {}).get("value")


@contextlib.contextmanager
def chromium(netns: str | None = None) -> Any:
    """A headless Chromium (optionally inside network namespace `netns`), attached to a page."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if not exe:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    prefix = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
    with tempfile.TemporaryDirectory(prefix="hpcdesk-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        cmd_r, cmd_w = os.pipe()
        out_r, out_w = os.pipe()
        argv = ["bash", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "chromium",
                *prefix, exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        proc = subprocess.Popen(argv, stdin=cmd_r, stdout=out_w, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        os.close(cmd_r)
        os.close(out_w)
        try:
            tools = DevTools(cmd_w, out_r)
            tools.attach_page()
            yield tools
        finally:
            # The browser and its helper processes (one group): stop them all before the
            # profile directory is removed.
            os.close(cmd_w)
            os.close(out_r)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def peer_configs(tools: DevTools) -> list[dict[str, Any]] | None:
    """The configurations of the page's RTCPeerConnections (None: RTC_SPY not installed)."""
    got = json.loads(str(tools.evaluate(PEER_CONFIGS)))
    return None if got is None else list(got)


def open_and_watch(tools: DevTools, url: str, out: Path, ok: Callable[[Path], bool],
                   timeout: float = 45.0, init_script: str | None = None,
                   login: tuple[str, str] | None = None) -> bool:
    """Navigate to `url`; screenshot into `out` every second until ok(out) or timeout.

    `login` (user, password) is answered the way a person answers the browser's prompt: once,
    after which the browser sends the credentials with every request to the site. (Credentials
    inside the page URL would make the page's own fetch() calls fail: the Selkies client then
    silently connects without its ICE servers.)
    """
    tools.call("Page.enable")
    tools.call("Runtime.enable")
    if init_script:
        tools.call("Page.addScriptToEvaluateOnNewDocument", source=init_script)
    if login:
        scheme, rest = url.split("://", 1)
        tools.call("Page.navigate", url=f"{scheme}://{login[0]}:{login[1]}@{rest}")
        deadline = time.monotonic() + 30
        while tools.evaluate("document.readyState") != "complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not load")
            time.sleep(0.2)
    tools.call("Page.navigate", url=url)
    deadline = time.monotonic() + timeout
    while True:
        time.sleep(1.0)
        shot = tools.call("Page.captureScreenshot", format="png")
        out.write_bytes(base64.b64decode(str(shot["data"])))
        if ok(out):
            return True
        if time.monotonic() > deadline:
            return False


def watch(url: str, out: Path, ok: Callable[[Path], bool], timeout: float = 45.0) -> bool:
    """Open `url` in headless Chromium; screenshot into `out` until ok(out) or timeout."""
    with chromium() as tools:
        return open_and_watch(tools, url, out, ok, timeout)
