"""Headless Chromium driven over the DevTools protocol: load a page, wait for the viewer
to say it is ready, click like a user (mouse events at an element's centre), read the
DOM and save full-page screenshots. Debian's ``chromium`` and ``websocket-client``."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    def __init__(self, profile: Path, port: int, width: int = 1280, height: int = 900):
        import websocket

        profile.mkdir(parents=True, exist_ok=True)
        self.log = open(profile / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-allow-origins=*",
                f"--remote-debugging-port={port}",
                f"--user-data-dir={profile / 'data'}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        target = self._page_target(port)
        self.ws = websocket.create_connection(target, timeout=60, suppress_origin=True)
        self._id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def _page_target(self, port: int, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            try:
                targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=2).json()
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError("chromium's DevTools endpoint did not come up")

    def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def eval(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout}s for {expression}; page: {self.text()[-1500:]}")

    def ready(self) -> str:
        """Wait until the viewer finished rendering the current route; its state."""
        state = self.wait(
            "['1', 'error'].includes(document.body && document.body.dataset.ready) "
            "&& document.body.dataset.ready"
        )
        return str(state)

    def goto(self, url: str) -> str:
        self.eval("document.body && (document.body.dataset.ready = 'navigating')")
        self.send("Page.navigate", {"url": url})
        return self.ready()

    def click(self, selector: str) -> str:
        """A user's click on the first element matching ``selector``: scrolled into view,
        mouse pressed and released at its centre; then wait for the next view."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return null; e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect();"
            " return {x: r.x + r.width / 2, y: r.y + r.height / 2}; })()"
        )
        if box is None:
            raise AssertionError(f"nothing to click: {selector}")
        self.eval("document.body.dataset.ready = 'clicked'")
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1},
            )
        return self.ready()

    def dom(self) -> str:
        return str(self.eval("document.documentElement.outerHTML"))

    def text(self) -> str:
        return str(self.eval("document.body ? document.body.innerText : ''"))

    def screenshot(self, path: Path) -> Path:
        """The whole page, not just the window."""
        self.eval("window.scrollTo(0, 0)")
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": min(size["height"], 6000),
                    "scale": 1,
                },
            },
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def overflowing(self) -> list[str]:
        """Elements whose content is cut off: SVG text outside its SVG, and anything wider
        than the page (a legend or a label that would be clipped)."""
        return list(
            self.eval(
                """(() => {
                  const out = [];
                  for (const svg of document.querySelectorAll('svg')) {
                    const box = svg.getBoundingClientRect();
                    for (const t of svg.querySelectorAll('text')) {
                      const r = t.getBoundingClientRect();
                      if (r.left < box.left - 1 || r.right > box.right + 1 ||
                          r.top < box.top - 1 || r.bottom > box.bottom + 1)
                        out.push('svg text ' + t.textContent);
                    }
                  }
                  const width = document.documentElement.clientWidth;
                  for (const e of document.querySelectorAll('figure, ul.legend, table')) {
                    if (e.getBoundingClientRect().right > width + 1)
                      out.push(e.tagName + ' ' + (e.id || e.className) + ' wider than the page');
                  }
                  return out;
                })()"""
            )
        )

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # noqa: BLE001 - it is going away either way
            pass
        self.ws.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
