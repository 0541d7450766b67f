"""palette serve in a real browser: headless Chromium (Debian's package) driven by Playwright.

Upload a photo, paint a stroke in the editor, run inpainting, and check the result: it appears, it differs from the
photo under the stroke and equals it far from it, and no request left 127.0.0.1. Also writes the README screenshot:

    .venv/bin/python tests/test_browser.py docs/ui.png      # the shipped model on a bundled photo
"""

from __future__ import annotations

import io
import shutil
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


def inpaint_in_browser(url: str, photo: Path, screenshot: Path, timeout_s: float = 90) -> tuple[np.ndarray, list[str]]:
    """Drive the page like a user; return the first sample's pixels and every URL the page requested."""
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
        finally:
            browser.close()
    return result, requests


@pytest.mark.skipif(chromium_path() is None, reason="Chromium is not installed (apt-get install chromium; "
                                                    ".ci/run installs it)")
def test_inpainting_in_a_real_browser(tmp_path):
    pytest.importorskip("gradio")
    pytest.importorskip("playwright")
    from conftest import save_tiny_model
    from test_serve import free_port, start_server, write_photo

    photo = write_photo(tmp_path / "photo.png", 120, 80)
    port = free_port()
    app = start_server(save_tiny_model(tmp_path), port)
    try:
        result, requests = inpaint_in_browser(f"http://127.0.0.1:{port}/", photo, tmp_path / "ui.png")
    finally:
        app.close()
    original = np.asarray(Image.open(photo).convert("RGB"))
    assert result.shape == original.shape  # the photo's own size came back
    changed = np.abs(result.astype(int) - original).max(axis=-1) > 0
    assert changed[40, 55:66].all()  # under the stroke, through the middle
    assert not changed[:10].any() and not changed[-10:].any()  # far from it, the photo's own pixels
    assert 0.01 < changed.mean() < 0.5
    assert (tmp_path / "ui.png").stat().st_size > 10_000
    hosts = {urlparse(request).hostname for request in requests if not request.startswith(("data:", "blob:"))}
    assert hosts == {"127.0.0.1"}, hosts


if __name__ == "__main__":  # the README screenshot: the shipped model on a bundled photo
    from palette.demo import example_images, shipped_model_path
    from palette.inference import load_model
    from palette.serve import build_app, launch

    from test_serve import free_port

    port = free_port()
    app = launch(build_app(load_model(shipped_model_path(), "cpu")), port=port, block=False)
    try:
        inpaint_in_browser(f"http://127.0.0.1:{port}/", example_images()[0], Path(sys.argv[1]), timeout_s=600)
    finally:
        app.close()
