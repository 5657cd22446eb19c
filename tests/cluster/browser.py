"""A real headless Chromium, driven over the DevTools protocol, that watches a page live.

`--screenshot` runs on virtual time and fires before a video stream has started; this opens
the page and takes real-time screenshots until a condition holds (or a deadline passes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--ignore-certificate-errors", "--window-size=1280,720", "--remote-debugging-port=0"]


async def _watch(ws_url: str, url: str, out: Path, ok: Callable[[Path], bool],
                 timeout: float) -> bool:
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
        counter = 0

        async def call(method: str, **params: object) -> dict[str, object]:
            nonlocal counter
            counter += 1
            await ws.send_json({"id": counter, "method": method, "params": params})
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("id") == counter:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return dict(data.get("result", {}))
            raise RuntimeError("DevTools connection closed")

        await call("Page.enable")
        await call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while True:
            await asyncio.sleep(1.0)
            shot = await call("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(str(shot["data"])))
            if ok(out):
                return True
            if time.monotonic() > deadline:
                return False


def watch(url: str, out: Path, ok: Callable[[Path], bool], timeout: float = 120.0) -> bool:
    """Open `url` in headless Chromium; screenshot into `out` until ok(out) or timeout."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="hpcdesk-chromium-",
                                     ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            assert proc.stderr is not None
            ws_url = ""
            start = time.monotonic()
            while time.monotonic() - start < 30:
                line = proc.stderr.readline()
                m = re.search(r"DevTools listening on (ws://\S+)", line)
                if m:
                    ws_url = m.group(1)
                    break
            if not ws_url:
                raise RuntimeError("chromium did not open its DevTools port")
            page_ws = asyncio.run(_page_target(ws_url))
            return asyncio.run(_watch(page_ws, url, out, ok, timeout))
        finally:
            # The browser and its helper processes (one group): stop them all before the
            # profile directory is removed.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def _page_target(browser_ws: str) -> str:
    base = browser_ws.split("/devtools/")[0].replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        for _ in range(50):
            async with http.get(f"{base}/json/list") as resp:
                targets = await resp.json()
            pages = [t for t in targets if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            await asyncio.sleep(0.1)
    raise RuntimeError("chromium has no page target")
