"""palette serve and palette study in a real browser: headless Chromium (Debian's package) driven by Playwright.

Upload a photo, paint a stroke in the editor, run inpainting, and check the result: it appears, it differs from the
photo under the stroke and equals it far from it, and no request left 127.0.0.1. In the study, a rater starts, sees
a pair that the page hides after its seconds, and answers; the answer is in the database. Also writes the README
screenshots:

    .venv/bin/python tests/test_browser.py docs/ui.png docs/study.png    # the shipped model on the bundled photos
"""

from __future__ import annotations

import io
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:Warning")]


def chromium_path() -> str | None:
    """Debian's Chromium (apt-get install chromium); Playwright's own browser download is not used."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def inpaint_in_browser(url: str, photo: Path, screenshot: Path,
                       timeout_s: float = 90) -> tuple[np.ndarray, list[str], tuple[bool, str, str]]:
    """Drive the page like a user; return the first sample's pixels, every URL the page requested, and then
    whether a model choice was shown for inpainting, which model is picked for JPEG, and the notes (or the error)
    of a JPEG run with *Advanced* opened and left as it is."""
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.goto(url, wait_until="networkidle")
            page.get_by_label("inpainting").check()
            page.locator("#photo input[type=file]").set_input_files(str(photo))
            canvas = page.locator("#editor canvas").first
            page.wait_for_function("() => document.querySelector('#editor canvas') !== null")
            link = page.locator("#files a[href]").first
            # The editor draws the photo as its background before it takes strokes; on a loaded machine that can
            # take seconds, and a stroke drawn before is lost ("paint over the part to fill first"): try again.
            for attempt in range(1, 4):
                time.sleep(1.5 * attempt)
                box = canvas.bounding_box()
                # A horizontal stroke through the middle of the canvas, where the photo is centred.
                y = box["y"] + box["height"] / 2
                page.mouse.move(box["x"] + box["width"] * 0.35, y)
                page.mouse.down()
                for step in range(1, 11):
                    page.mouse.move(box["x"] + box["width"] * (0.35 + 0.03 * step), y)
                    time.sleep(0.05)  # the editor samples the pointer per frame
                page.mouse.up()
                page.locator("#run").click()
                page.locator("#files a[href], .toast-body").first.wait_for(timeout=timeout_s * 1000)
                if link.count():
                    break
                message = page.locator(".toast-body").first.inner_text()
                if "paint over" not in message or attempt == 3:
                    raise AssertionError(f"the page shows an error: {message}")
                page.locator(".toast-body").first.evaluate("toast => toast.remove()")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(screenshot), full_page=True)
            response = page.request.get(link.get_attribute("href"))
            result = np.asarray(Image.open(io.BytesIO(response.body())).convert("RGB"))
            model_shown = page.locator("#model").is_visible()
            page.locator("#task").get_by_label("jpeg", exact=True).check()
            page.locator("#model").wait_for(state="visible", timeout=30_000)
            jpeg_model = page.locator("#model input:checked").get_attribute("value")
            page.get_by_text("Advanced").click()
            page.locator("#run").click()
            page.locator(f"#notes:has-text('the {jpeg_model} model'), .toast-body").first.wait_for(
                timeout=timeout_s * 1000)
            jpeg_notes = page.locator(f"#notes:has-text('the {jpeg_model} model'), .toast-body").first.inner_text()
        finally:
            browser.close()
    return result, requests, (model_shown, jpeg_model, jpeg_notes)


def rate_in_browser(url: str, seconds: float, screenshot: Path) -> tuple[bool, bool]:
    """Start as rater "ann", capture the first pair, answer it after the page hid it; return whether the pair was
    visible at first and after `seconds`."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(url, wait_until="load")  # the page's timer keeps the network busy: never idle
            page.locator("#rater textarea, #rater input").first.fill("ann")
            page.locator("#start").click()
            page.locator("#left img").wait_for(timeout=60_000)
            page.screenshot(path=str(screenshot), full_page=True)
            shown = page.locator("#left img").is_visible() and page.locator("#right img").is_visible()
            time.sleep(seconds + 2)
            still_shown = page.locator("#left img").is_visible() or page.locator("#right img").is_visible()
            page.locator("#pick-left").click()
            page.get_by_text("Pair 2 of").wait_for(timeout=30_000)
        finally:
            browser.close()
    return shown, still_shown


needs_chromium = pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (apt-get install "
                                                                    "chromium; .ci/run installs it)")


@needs_chromium
def test_inpainting_in_a_real_browser(tmp_path):
    pytest.importorskip("gradio")
    pytest.importorskip("playwright")
    from test_serve import free_port, save_tiny_models, start_server, write_photo

    photo = write_photo(tmp_path / "photo.png", 120, 80)
    port = free_port()
    app = start_server(save_tiny_models(tmp_path), port)
    try:
        result, requests, (model_shown, jpeg_model, jpeg_notes) = inpaint_in_browser(f"http://127.0.0.1:{port}/",
                                                                                      photo, tmp_path / "ui.png")
    finally:
        app.close()
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert result.shape == original.shape  # the photo's own size came back
    changed = np.abs(result.astype(int) - original).max(axis=-1) > 0
    assert changed[40, 55:66].all()  # under the stroke, through the middle
    assert not changed[:10].any() and not changed[-10:].any()  # far from it, the photo's own pixels
    assert 0.01 < changed.mean() < 0.5
    assert not model_shown and jpeg_model == "tiny-jpeg"  # one model for inpainting; for JPEG, the JPEG-only one
    assert jpeg_notes.startswith("1 sample(s) at 120×80"), jpeg_notes  # Advanced's defaults run as they are
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    hosts = {urlparse(request).hostname for request in requests if not request.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, hosts


@needs_chromium
def test_a_rater_in_a_real_browser_sees_a_pair_for_its_seconds(tmp_path):
    pytest.importorskip("gradio")
    pytest.importorskip("playwright")
    from palette.study import serve_study
    from test_serve import free_port
    from test_study import _study_folders

    real, fake = _study_folders(tmp_path, 2)
    port = free_port()
    app = serve_study(real, [fake], db=tmp_path / "study.sqlite", seconds=2, port=port, block=False)
    try:
        shown, still_shown = rate_in_browser(f"http://127.0.0.1:{port}/", 2, tmp_path / "study.png")
    finally:
        app.close()
    assert shown and not still_shown  # the pair shows, then the page's timer hides it
    with sqlite3.connect(tmp_path / "study.sqlite") as connection:
        rows = connection.execute("SELECT rater, choice, seconds FROM answers").fetchall()
    connection.close()
    assert len(rows) == 1 and rows[0][:2] == ("ann", "left") and rows[0][2] > 2


if __name__ == "__main__":  # the README screenshots: the shipped model on the bundled photos
    import tempfile

    from palette.degrade import degrade_folder
    from palette.demo import example_images, shipped_model_path
    from palette.folders import sample_folder
    from palette.inference import load_models
    from palette.serve import build_app, launch
    from palette.study import serve_study

    from test_serve import free_port

    port = free_port()
    app = launch(build_app(load_models(None, "cpu")), port=port, block=False)
    try:
        inpaint_in_browser(f"http://127.0.0.1:{port}/", example_images()[0], Path(sys.argv[1]), timeout_s=600)
    finally:
        app.close()
    with tempfile.TemporaryDirectory() as folder:  # colorizations of the bundled photos at 128 px, paired
        examples = example_images()[0].parent
        degrade_folder("colorization", examples, Path(folder) / "set", seed=0, size=128)
        sample_folder(shipped_model_path(), "colorization", Path(folder) / "set" / "inputs",
                      Path(folder) / "palette-64_colorization", progress=False)
        port = free_port()
        app = serve_study(Path(folder) / "set" / "targets", [Path(folder) / "palette-64_colorization"],
                          db=Path(folder) / "study.sqlite", seconds=3, port=port, block=False)
        try:
            rate_in_browser(f"http://127.0.0.1:{port}/", 3, Path(sys.argv[2]))
        finally:
            app.close()
