"""The ``audiopg synth --html`` page in a real headless browser (Debian's Chromium at /usr/bin/chromium).

Chromium is driven over its DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages separated by
NUL bytes on file descriptors 3 and 4), spoken with the standard library only.  The page must load with no console
error, every ``<audio>`` must decode its metadata (finite duration) and every ``<img>`` its pixels; a screenshot is
saved.  Skipped when the browser is absent (``apt-get install chromium``).
"""
from __future__ import annotations

import base64
import json
import os
import queue
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from audiopg.cli.main import main

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--mute-audio", "--remote-debugging-pipe"]
VIEW = (1280, 1400)  # screenshot size, CSS pixels
TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)")

# every <audio> until its metadata loads (or fails), every <img> decoded; then one JSON line per element
CHECK = """(async () => {
  const audios = [...document.querySelectorAll('audio')];
  await Promise.all(audios.map(a => a.readyState >= 1 || a.error ? null : new Promise(done => {
    a.addEventListener('loadedmetadata', done, {once: true});
    a.addEventListener('error', done, {once: true});
    setTimeout(done, 20000);
  })));
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return JSON.stringify({
    audio: audios.map(a => ({ready: a.readyState, duration: a.duration, error: a.error ? a.error.code : null})),
    images: images.map(i => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})),
  });
})()"""


class Browser:
    """Headless Chromium and one page, over the DevTools pipe."""

    def __init__(self, profile: Path):
        cmd_r, self._cmd_w = os.pipe()  # we write commands, the browser reads fd 3
        self._resp_r, resp_w = os.pipe()  # the browser writes fd 4, we read

        def fds():  # in the child: the pipe ends at 3 and 4 (dup2 makes them inheritable; ours are not)
            a, b = os.dup(cmd_r), os.dup(resp_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, close_fds=False,
                                     preexec_fn=fds)
        os.close(cmd_r)
        os.close(resp_w)
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._next = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.log: list[bytes] = []  # the browser's stderr, drained so that it never blocks
        self._drain = threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True)
        self._drain.start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=VIEW[0], height=VIEW[1],
                  deviceScaleFactor=1, mobile=False)

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._resp_r, "rb", buffering=0) as f:
            while chunk := f.read(1 << 16):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for m in messages:
                    self._inbox.put(json.loads(m))
        self._inbox.put(None)

    def _receive(self, deadline: float) -> dict:
        msg = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        if msg is None:
            self._died()
        if "id" not in msg:
            self.events.append(msg)
        return msg

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next += 1
        msg = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        try:
            os.write(self._cmd_w, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError:
            self._died()
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _died(self):
        time.sleep(0.5)
        raise RuntimeError(f"the browser closed its pipe (exit status {self.proc.poll()}); its last words:\n"
                           + b"".join(self.log[-20:]).decode(errors="replace"))

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        seen = len(self.events)
        self.call("Page.navigate", session=True, url=url)
        deadline = time.monotonic() + TIMEOUT
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events[seen:]):
            self._receive(deadline)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, awaitPromise=True,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"script failed: {result['exceptionDetails']}")
        return result["result"]["value"]

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def console_errors(self) -> list[str]:
        """Console errors and warnings of the page's scripts, uncaught exceptions, and the browser's own log
        errors (failed loads, bad resources)."""
        out = []
        for e in self.events:
            p, method = e.get("params", {}), e.get("method")
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description")))
                                                               for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log {p['entry']['level']} ({p['entry']['source']}): {p['entry']['text']}")
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, queue.Empty):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd_w)
        self._drain.join(timeout=10)
        self.proc.stderr.close()


def load(page: Path, tmp: Path) -> tuple[dict, list[str], bytes]:
    """(element checks, console errors, screenshot PNG) of ``page`` in a fresh browser profile."""
    browser = Browser(Path(tempfile.mkdtemp(prefix="profile-", dir=tmp)))
    try:
        browser.open(page.resolve().as_uri())
        checks = json.loads(browser.evaluate(CHECK))
        time.sleep(0.2)  # late console messages
        browser.call("Runtime.evaluate", session=True, expression="1")
        return checks, browser.console_errors(), browser.screenshot()
    finally:
        browser.close()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_synth_page_loads_plays_and_shows_in_chromium(tmp_path):
    out = tmp_path / "world"
    assert main(["synth", "--preset", "rich", "--n", "4", "--seconds", "2", "--seed", "3", "--out", str(out),
                 "--html"]) == 0
    checks, errors, shot = load(out / "index.html", tmp_path)
    (tmp_path / "screenshot.png").write_bytes(shot)
    print(f"screenshot: {tmp_path / 'screenshot.png'}")
    assert errors == []
    assert len(checks["audio"]) == 4 and len(checks["images"]) == 4
    for a in checks["audio"]:
        assert a["error"] is None and a["ready"] >= 1, a
        assert a["duration"] == pytest.approx(2.0, abs=0.01)  # the browser decoded the clip's header
    for i in checks["images"]:
        assert i["complete"] and (i["width"], i["height"]) == (320, 120), i
    assert png_size(shot) == VIEW
    assert len(shot) > 20_000  # a rendered page, not a blank one (a blank 1280 x 1400 PNG is a few kB)


def test_the_check_sees_broken_media_and_console_errors(tmp_path):
    """The harness itself: an undecodable image and sound, a missing file and a script error each fail a check."""
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
                    '<img src="data:image/png;base64,AAAA"><img src="missing.png"><audio preload="metadata" '
                    'src="data:audio/flac;base64,AAAA"></audio><script>console.error("boom")</script></body></html>')
    checks, errors, _ = load(page, tmp_path)
    assert "console.error: boom" in errors
    assert any("ERR_FILE_NOT_FOUND" in e for e in errors), errors
    assert [i["width"] for i in checks["images"]] == [0, 0]
    assert checks["audio"][0]["error"] is not None and checks["audio"][0]["ready"] == 0
