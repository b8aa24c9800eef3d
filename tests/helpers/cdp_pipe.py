"""A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (standard library only).

Chromium reads NUL-terminated JSON commands from file descriptor 3 and writes responses and events to fd 4.
Used by the result-page test to open a ``file://`` page in real time (no virtual time), wait until the page
reports its state, collect every console message with its level, and take a screenshot.
"""

import base64
import fcntl
import json
import os
import subprocess
import tempfile
import threading
import time
from typing import Any, Optional


class PipeBrowser:
    """Headless Chromium driven over a CDP pipe; one page (a flattened target session)."""

    def __init__(self, executable: str, flags: list[str]) -> None:
        self._cmd_r, self._cmd_w = os.pipe()
        self._resp_r, self._resp_w = os.pipe()
        self._profile = tempfile.TemporaryDirectory(prefix="fourdfy-chromium-")

        def child_fds() -> None:  # fds 3 and 4 of the child; move both out of the way first (either may be 3 or 4)
            high_r = fcntl.fcntl(self._cmd_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(self._resp_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", f"--user-data-dir={self._profile.name}", *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, close_fds=False,  # only the dup2'd fds 3 and 4 are inheritable (PEP 446)
        )  # fmt: skip
        os.close(self._cmd_r)
        os.close(self._resp_w)
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session: Optional[str] = None

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._resp_r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                with self._cond:
                    if "id" in msg:
                        self._responses[msg["id"]] = msg
                    else:
                        self.events.append(msg)
                    self._cond.notify_all()

    def send(self, method: str, params: Optional[dict] = None, session: bool = True, timeout: float = 60.0) -> dict:
        """Send a command (to the page session unless ``session=False``) and wait for its result."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._next_id not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no answer to {method} (chromium exit code {self.proc.poll()})")
                self._cond.wait(left)
            reply = self._responses.pop(self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url: str) -> None:
        """Create a page, attach to it, enable the Runtime, Log and Page domains and navigate to ``url``."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float = 60.0, poll: float = 0.25) -> Any:
        """Poll ``expression`` until it is truthy; returns its last value (falsy on timeout)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(poll)
        return value

    def screenshot(self, path: str) -> None:
        """A PNG of the whole page."""
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def element_pixels(self, element_id: str):
        """RGB pixels (a ``[H, W, 3]`` uint8 array) of the element's box as rendered now."""
        import io

        import numpy as np
        from PIL import Image

        x, y, w, h = self.evaluate(
            f"(function () {{ var r = document.getElementById('{element_id}').getBoundingClientRect(); "
            "return [r.x, r.y, r.width, r.height]; })()"
        )
        clip = {"x": x, "y": y, "width": w, "height": h, "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "clip": clip})["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def console_messages(self) -> list[tuple[str, str]]:
        """``(level, text)`` of every console call, uncaught exception and browser log entry so far."""
        out = []
        for ev in list(self.events):
            p = ev.get("params", {})
            if ev.get("method") == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                out.append((p.get("type", ""), text))
            elif ev.get("method") == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(("exception", d.get("exception", {}).get("description", d.get("text", ""))))
            elif ev.get("method") == "Log.entryAdded":
                e = p.get("entry", {})
                out.append((e.get("level", ""), f"[{e.get('source', '')}] {e.get('text', '')}"))
        return out

    def close(self) -> None:
        """Ask the browser to quit, then make sure it is gone."""
        try:
            self.send("Browser.close", session=False, timeout=10)
        except (TimeoutError, RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        self._reader.join(timeout=10)
        os.close(self._resp_r)
        self._profile.cleanup()

    def __enter__(self) -> "PipeBrowser":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
