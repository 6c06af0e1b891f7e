"""Headless Chromium driven over the DevTools protocol: open a page, wait for what a person would see, screenshot.

Debian's ``chromium`` package; the websocket client is the ``websockets`` package Prefect installs. The browser
runs with a proxy on a closed loopback port, so nothing outside this machine can load: a page that needs the
internet shows it as a blank chart or a broken image here too. Loopback addresses bypass the proxy.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from helpers import free_port
from websockets.sync.client import ClientConnection, connect

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NOT_INSTALLED = "Chromium is not installed: run 'apt-get install chromium' (make test installs it where apt-get works)"

# every canvas drawn by vega-embed: how many of its pixels are painted and not near-white
PAINTED_PIXELS = """
[...document.querySelectorAll('.vega-embed canvas')].map((canvas) => {
  const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] > 0 && Math.min(pixels[i], pixels[i + 1], pixels[i + 2]) < 200) painted++;
  }
  return painted;
})
"""
# the natural width of every image embedded in the page as a data URI (0: not decoded or broken)
EMBEDDED_IMAGES = "[...document.images].filter((i) => i.src.startsWith('data:image/')).map((i) => i.naturalWidth)"


class Page:
    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.last_id = 0
        self.requested: list[str] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        self.socket.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("method") == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """The value of ``expression`` once it is truthy (polled while the page loads and renders: until then
        it may also throw, e.g. before ``document.body`` exists)."""
        deadline = time.monotonic() + timeout
        value: Any = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except AssertionError as exc:
                value = exc
            if value and not isinstance(value, AssertionError):
                return value
            time.sleep(0.5)
        text = self.evaluate("document.body ? document.body.innerText.slice(0, 2000) : ''")
        raise AssertionError(f"never true: {expression.strip()} (last value {value!r}); the page reads:\n{text}")

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """The whole page, or with ``full_page=False`` the window as it is scrolled."""
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=full_page)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


class Browser:
    def __init__(self, width: int = 1400, height: int = 1000) -> None:
        self.port = free_port()
        self.profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)  # its helpers may still be exiting
        self.process = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={width},{height}",
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.profile.name}",
                f"--proxy-server=127.0.0.1:{free_port()}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._devtools("json/version")
        self.pages: list[Page] = []

    def _devtools(self, path: str, method: str = "GET", timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{self.port}/{path}", method=method)
                with urllib.request.urlopen(request, timeout=5) as response:
                    return json.loads(response.read())
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)

    def open(self, url: str) -> Page:
        """A new tab at ``url``, recording every request it makes (``Page.requested``)."""
        target = self._devtools("json/new?about:blank", method="PUT")
        page = Page(connect(target["webSocketDebuggerUrl"], max_size=None))
        self.pages.append(page)
        page.call("Network.enable")
        page.call("Page.enable")
        page.call("Page.navigate", url=url)
        return page

    def close(self) -> None:
        for page in self.pages:
            page.socket.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.profile.cleanup()
