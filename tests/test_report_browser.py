"""The HTML report in a real headless Chromium, opened from the file system: tables laid out, every
chart image decoded, flagged cells styled, and a screenshot that is not blank.

Talks to Chromium over its DevTools pipe (--remote-debugging-pipe: NUL-terminated JSON on fds 3/4),
so no websocket library or driver binary is needed. Skips, with the reason, where no Chromium or
Chrome is installed; CI installs Debian's `chromium`.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from report_synthetic import make_site_store
from teswap.reporting.display import results_table
from teswap.reporting.frame import load_frame
from teswap.reporting.html import write_site

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
WIDTH, HEIGHT = 1400, 1000


def find_browser() -> str | None:
    """TESWAP_CHROMIUM, else the first Chromium or Chrome on PATH."""
    return os.environ.get("TESWAP_CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)


class DevToolsPipe:
    """A headless browser process and a minimal synchronous DevTools client over its pipe."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Park the child's ends at fd >= 10 so the dup2 onto 3 and 4 below cannot clobber one another.
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        devnull = os.open(os.devnull, os.O_WRONLY)
        actions = [(os.POSIX_SPAWN_DUP2, child_r, 3), (os.POSIX_SPAWN_DUP2, child_w, 4),
                   (os.POSIX_SPAWN_DUP2, devnull, 1), (os.POSIX_SPAWN_DUP2, devnull, 2)]
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        self.pid = os.posix_spawn(binary, argv, os.environ, file_actions=actions)
        for fd in (to_browser_r, from_browser_w, child_r, child_w, devnull):
            os.close(fd)
        self.out, self.inp = to_browser_w, from_browser_r
        self.buffer, self.next_id, self.events = b"", 0, []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.inp], [], [], remaining)[0]:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise ConnectionError("the browser closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, timeout_s: float = 30, **params: Any) -> dict:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str, timeout_s: float = 30) -> dict:
        """The first event named `method`, already received or arriving within the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout_s=5)
        except (OSError, RuntimeError, TimeoutError, ConnectionError):
            os.kill(self.pid, signal.SIGKILL)
        finally:
            os.waitpid(self.pid, 0)
            os.close(self.out)
            os.close(self.inp)


# Runs in the page after load: waits for every image, then reports what the browser laid out.
INSPECT = """(async () => {
  await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
  const box = el => { const r = el.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    title: document.title,
    tables: [...document.querySelectorAll('table')].map(t => ({cls: t.className, rows: t.rows.length,
                                                               cols: t.rows[0].cells.length, box: box(t)})),
    images: [...document.images].map(img => ({src: img.getAttribute('src'), complete: img.complete,
                                              natural: [img.naturalWidth, img.naturalHeight], box: box(img)})),
    flagged: [...document.querySelectorAll('table.results td.flag')].map(td => getComputedStyle(td).backgroundColor),
    plain: getComputedStyle(document.querySelector('table.results td:not(.flag)')).backgroundColor,
    height: document.documentElement.scrollHeight,
  };
})()"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    binary = find_browser()
    if binary is None:
        pytest.skip("no Chromium/Chrome found (apt-get install chromium, or set TESWAP_CHROMIUM)")
    root = tmp_path_factory.mktemp("browser")
    store = make_site_store(root)
    index = write_site(load_frame(store["results"]), root / "site", repo=store["repo"])
    browser = DevToolsPipe(binary, root / "profile")
    try:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        browser.call("Page.enable", session)
        browser.call("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT,
                     deviceScaleFactor=1, mobile=False)
        browser.call("Page.navigate", session, url=index.as_uri())
        browser.wait_event("Page.loadEventFired")
        facts = browser.call("Runtime.evaluate", session, expression=INSPECT, awaitPromise=True,
                             returnByValue=True)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", session, format="png", captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": WIDTH, "height": min(facts["height"], 4000), "scale": 1})
    finally:
        browser.close()
    return {"facts": facts, "png": base64.b64decode(shot["data"])}


def test_tables_render_with_rows_and_size(rendered):
    facts = rendered["facts"]
    assert facts["title"] == "teswap results"
    tables = {t["cls"]: t for t in facts["tables"]}
    columns = len(results_table(pd.DataFrame()).headers)  # the headers the published table declares
    assert tables["results"]["rows"] == 7 and tables["results"]["cols"] == columns >= 14
    assert tables["results"]["box"][0] > 800 and tables["results"]["box"][1] > 150
    assert tables["commits"]["rows"] == 4 and tables["commits"]["box"][1] > 50


def test_every_chart_image_decodes_and_is_laid_out(rendered):
    images = rendered["facts"]["images"]
    assert len(images) == 11
    broken = [img["src"] for img in images if not img["complete"] or min(img["natural"]) == 0]
    assert not broken, f"images that did not load: {broken}"
    assert all(img["box"][0] > 400 and img["box"][1] > 200 for img in images)


def test_flagged_cells_are_visibly_styled(rendered):
    facts = rendered["facts"]
    assert len(facts["flagged"]) == 6 and set(facts["flagged"]) == {"rgb(253, 224, 220)"}
    assert facts["plain"] != facts["flagged"][0]


def test_screenshot_is_not_blank(rendered):
    from matplotlib.image import imread

    pixels = imread(io.BytesIO(rendered["png"]), format="png")
    assert pixels.shape[1] == WIDTH and pixels.shape[0] > HEIGHT
    assert pixels[..., :3].std() > 0.05  # text, tables and charts, not a white page
    flag = (abs(pixels[..., 0] - 253 / 255) < 0.01) & (abs(pixels[..., 1] - 224 / 255) < 0.01)
    assert flag.sum() > 1000  # the flagged cells' background is on screen
