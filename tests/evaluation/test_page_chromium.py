"""The result page opened from file:// in headless Chromium (Debian's package): the videos play, our WebGL viewer
(fourdfy/evaluation/assets/viewer.js) loads the model and plays its frames, the canvas is not blank, nothing is
logged as an error or a warning, and a viewer that cannot show the model says so in the page.

The page is driven in real time over the DevTools protocol (tests/helpers/cdp_pipe.py); WebGL runs on the CPU
(SwiftShader). The viewer's state is ``window.fourdfyViewer`` (see viewer.js). Install Chromium with
``apt-get install -y chromium``; without it these tests are skipped. Set ``FOURDFY_PAGE_SCREENSHOT=/path/shot.png``
to keep the screenshot of the animated page (and ``/path/shot-static.png`` of the static one).
"""

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox", "--hide-scrollbars", "--mute-audio", "--window-size=1280,1500",
    "--enable-unsafe-swiftshader", "--use-angle=swiftshader",  # WebGL on the CPU
]  # fmt: skip
READY = """(function () {
  var d = document.body && document.body.dataset;
  if (!d || !(d.model === 'loaded' || d.model === 'error') || d.videosReady !== d.videosTotal) return null;
  return Object.assign({}, d);
})()"""
VIEWER = "JSON.parse(JSON.stringify(window.fourdfyViewer || null))"  # the status fields, without the methods
VIDEOS = """Array.prototype.map.call(document.querySelectorAll('video'), function (v) {
  return {time: v.currentTime, paused: v.paused, width: v.videoWidth};
})"""
STILL = "(function (k) { var v = window.fourdfyViewer; v.pause(); v.setAutoRotate(false); v.setFrame(k); })"
BACKGROUND = (244, 244, 244)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)"
)


def bad_messages(browser) -> list[tuple[str, str]]:
    return [(level, text) for level, text in browser.console_messages() if level in ("error", "warning", "assert", "exception")]


def covered(pixels: np.ndarray) -> float:
    """Share of the pixels that differ from the viewer's background."""
    return float((np.abs(pixels.astype(int) - BACKGROUND).sum(-1) > 30).mean())


def keep_screenshot(shot: Path, suffix: str = "") -> None:
    keep = os.environ.get("FOURDFY_PAGE_SCREENSHOT")
    if keep:
        target = Path(keep)
        shutil.copy(shot, target.with_name(target.stem + suffix + target.suffix))


def test_page_shows_videos_and_model_without_console_errors(page_trial, tmp_path):
    from cdp_pipe import PipeBrowser

    page = (page_trial.trial / "save" / "index.html").resolve()
    with PipeBrowser(CHROMIUM, FLAGS) as browser:
        browser.open(page.as_uri())
        state = browser.wait_for(READY, timeout=90)
        assert state, browser.evaluate("Object.assign({}, document.body.dataset)")
        viewer = browser.evaluate(VIEWER)
        first_videos = browser.evaluate(VIDEOS)
        seen, deadline = set(), time.monotonic() + 30  # the frames play in turn (4 frames at 4 fps, looping)
        while len(seen) < 3 and time.monotonic() < deadline:
            seen.add(browser.evaluate("window.fourdfyViewer.frame"))
            time.sleep(0.1)
        later = browser.evaluate(VIEWER)
        videos = browser.evaluate(VIDEOS)
        shot = tmp_path / "page.png"
        browser.screenshot(str(shot))
        coverage, shown = {}, {}  # the growing sphere (r 0.2 -> 0.7) in the first and the last frame
        for k in (0, 3):
            browser.evaluate(f"{STILL}({k})")
            coverage[k] = browser.evaluate("window.fourdfyViewer.coverage()")  # gl.readPixels of a fresh draw
            time.sleep(0.8)
            shown[k] = covered(browser.element_pixels("viewer"))  # what the page composited on screen
        controls = browser.evaluate("[document.querySelector('.fv-slider').max, document.querySelector('.fv-play').hidden]")
        messages = bad_messages(browser)
    assert state["videosTotal"] == "2" and state["model"] == "loaded" and state["frames"] == "4", state
    assert state["errors"] == "0" and state["warnings"] == "0", state
    assert viewer["loaded"] and viewer["error"] is None and viewer["frames"] == 4 and viewer["playing"], viewer
    assert viewer["duration"] == pytest.approx(1.0)  # 4 frames at 4 fps: the glb's step animation
    assert len(seen) >= 3, seen
    assert later["drawn"] > viewer["drawn"] and later["playing"], (viewer, later)
    for before, now in zip(first_videos, videos):
        assert now["width"] == 64 and not now["paused"] and now["time"] != before["time"]
    assert coverage[3] > 4 * coverage[0] > 0.02, coverage
    assert shown[3] > 4 * shown[0] > 0.02, shown
    assert controls == ["3", False]
    assert not messages, messages
    assert shot.stat().st_size > 10_000
    keep_screenshot(shot)


def test_static_model_shows_one_frame(page_trial, tmp_path):
    from cdp_pipe import PipeBrowser
    from synthetic_trials import GrowingSphere, SigmoidMaterial

    from fourdfy.evaluation.page import write_result_page
    from fourdfy.exporters import export_meshes, write_glb

    trial = tmp_path / "trial"
    shutil.copytree(page_trial.trial, trial)
    meshes = export_meshes(GrowingSphere(static=True), SigmoidMaterial(), [0.0], 32, 25.0, progress=False)
    write_glb(meshes, trial / "save" / "it20-export" / "model.glb")
    page = write_result_page(trial).resolve()
    with PipeBrowser(CHROMIUM, FLAGS) as browser:
        browser.open(page.as_uri())
        state = browser.wait_for(READY, timeout=90)
        browser.wait_for("window.fourdfyViewer.drawn > 2", timeout=20)
        viewer = browser.evaluate(VIEWER)
        shot = tmp_path / "page.png"
        browser.screenshot(str(shot))
        browser.evaluate(f"{STILL}(0)")
        coverage = browser.evaluate("window.fourdfyViewer.coverage()")
        hidden = browser.evaluate("[document.querySelector('.fv-slider').hidden, document.querySelector('.fv-play').hidden]")
        messages = bad_messages(browser)
        # malformed data: the viewer refuses it in words, in the box and in its status (after the messages above)
        failures = browser.evaluate("""(function () {
          var good = Uint8Array.from(atob(document.getElementById('glb-base64').textContent.trim()), c => c.charCodeAt(0));
          var header = new Uint8Array(20), d = new DataView(header.buffer);  // a valid header, one empty BIN chunk
          [0x46546c67, 2, 20, 0, 0x004e4942].forEach(function (v, i) { d.setUint32(4 * i, v, true); });
          return [good.slice(0, 100), new Uint8Array(40), header].map(function (bytes) {
            var box = document.createElement('div'); document.body.appendChild(box);
            var s = window.fourdfyView(box, bytes);
            return [s.loaded, s.error, box.querySelector('.fv-error').textContent];
          });
        })()""")
        # the WebGL 1 path (SwiftShader offers WebGL 2, which the viewer takes first)
        webgl1 = browser.evaluate("""(function () {
          var get = HTMLCanvasElement.prototype.getContext;
          HTMLCanvasElement.prototype.getContext = function (kind, opts) { return kind === 'webgl2' ? null : get.call(this, kind, opts); };
          var box = document.createElement('div'); document.body.appendChild(box);
          var s = window.fourdfyView(box, Uint8Array.from(atob(document.getElementById('glb-base64').textContent.trim()), c => c.charCodeAt(0)));
          s.setAutoRotate(false);
          var gl1 = box.querySelector('canvas').getContext('webgl') instanceof WebGLRenderingContext;
          return [s.loaded, s.error, gl1, s.coverage()];
        })()""")
    assert state["model"] == "loaded" and state["frames"] == "1" and state["errors"] == "0", state
    assert webgl1[:3] == [True, None, True] and webgl1[3] == pytest.approx(coverage, rel=0.05), (webgl1, coverage)
    assert viewer["loaded"] and viewer["frames"] == 1 and viewer["duration"] == 0 and not viewer["playing"], viewer
    assert coverage > 0.1, coverage  # the sphere of radius 0.2 framed on its own
    assert hidden == [True, True]  # no slider nor play button for one frame
    assert not messages, messages
    expected = ("truncated .glb", "bad magic", "no JSON chunk")
    for (loaded, error, text), words in zip(failures, expected):
        assert not loaded and words in error and words in text, (error, text)
    keep_screenshot(shot, "-static")


def test_without_webgl_the_viewer_says_so(page_trial):
    from cdp_pipe import PipeBrowser

    page = (page_trial.trial / "save" / "index.html").resolve()
    with PipeBrowser(CHROMIUM, [*FLAGS, "--disable-3d-apis"]) as browser:
        browser.open(page.as_uri())
        state = browser.wait_for(READY, timeout=90)
        viewer = browser.evaluate(VIEWER)
        text = browser.evaluate("document.querySelector('#viewer .fv-error').textContent")
        listed = browser.evaluate("document.getElementById('page-errors').textContent")
    assert state["model"] == "error" and state["errors"] == "1", state
    assert not viewer["loaded"] and "WebGL is not available" in viewer["error"], viewer
    assert "WebGL is not available" in text and "WebGL is not available" in listed
