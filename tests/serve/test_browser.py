"""End to end: `dfudet serve` on a loopback port, driven in headless Chromium (Selenium): upload, boxes, slider."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

from _require import import_or_skip, skip_or_fail
from _serve import dfudet_serve
from dfudet.data import instance_masks
from dfudet.data.demo import render_sample

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path(os.environ.get("DFUDET_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DFUDET_CHROMEDRIVER", "/usr/bin/chromedriver"))
SCREENSHOT = REPO / "docs" / "img" / "serve.png"

pytestmark = pytest.mark.slow


def _browser_or_skip() -> None:
    """Install the browser through the project's script when missing; skip only when that is impossible."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        out = subprocess.run(["bash", str(REPO / "scripts" / "ensure-browser.sh")], capture_output=True, text=True)
        if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
            skip_or_fail(f"headless Chromium cannot be installed here: {out.stdout.strip() or out.stderr.strip()}")


@pytest.fixture(scope="module")
def server(served_checkpoint: Path):
    """`python -m dfudet.cli serve` in a subprocess on a free loopback port; yields its base URL.

    DFUDET_E2E_CHECKPOINT=runs/demo/train/best_model.pth serves a trained model instead (nicer screenshot)."""
    served_checkpoint = Path(os.environ.get("DFUDET_E2E_CHECKPOINT") or served_checkpoint)
    with dfudet_serve(served_checkpoint, "--host", "127.0.0.1", timeout=90, env={"DFUDET_TOKEN": ""}) as s:
        yield s.url


@pytest.fixture(scope="module")
def outline_server(outline_checkpoint: Path):
    """`dfudet serve` of the small Mask R-CNN (an outline model); yields its base URL."""
    with dfudet_serve(outline_checkpoint, "--host", "127.0.0.1", timeout=90, env={"DFUDET_TOKEN": ""}) as s:
        yield s.url


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):
    _browser_or_skip()
    webdriver = import_or_skip("selenium.webdriver", reason="pip package selenium (dev extra) not installed")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_AVOID_STATS", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--disable-dev-shm-usage",
                 "--window-size=1280,860", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, script: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def test_page_uploads_draws_boxes_and_filters_with_the_slider(server: str, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    # DFUDET_E2E_PHOTO: a real photo for the README screenshot (see README, "Regenerating the screenshot")
    photo = Path(os.environ.get("DFUDET_E2E_PHOTO") or tmp_path / "demo_foot.png")
    if not os.environ.get("DFUDET_E2E_PHOTO"):
        Image.fromarray(render_sample(5, 0, 320, healthy=False).image).save(photo)
    with Image.open(photo) as im:
        photo_size = im.size
    api = httpx.post(f"{server}/v1/detect", params={"min_score": 0}, timeout=60,
                     files={"file": (photo.name, photo.read_bytes(),
                                     "image/png" if photo.suffix.lower() == ".png" else "image/jpeg")}).json()
    assert len(api["scores"]) >= 3, "the demo model should propose several boxes"

    browser.get(server + "/")
    _wait(browser, "return window.dfudet && window.dfudet.health !== null")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=threshold]").text == "Score threshold"
    browser.find_element(By.ID, "file").send_keys(str(photo))
    _wait(browser, "return window.dfudet.result !== null && document.getElementById('canvas').dataset.drawnBoxes")

    page = browser.execute_script("return window.dfudet.result")
    assert page == api, "the page must show exactly what the API returns for the same image"
    canvas = browser.find_element(By.ID, "canvas")
    assert (int(canvas.get_attribute("width")), int(canvas.get_attribute("height"))) == photo_size

    scores = np.array(api["scores"])
    threshold = browser.execute_script("return window.dfudet.threshold")
    assert threshold == pytest.approx(api["threshold"])
    assert int(canvas.get_attribute("data-drawn-boxes")) == int((scores >= threshold).sum())

    slider = browser.find_element(By.ID, "threshold")
    slider.send_keys(Keys.HOME)  # keyboard: threshold 0 shows every box
    assert browser.execute_script("return window.dfudet.threshold") == 0
    assert int(canvas.get_attribute("data-drawn-boxes")) == len(scores)
    x1, y1, x2, _ = api["boxes"][0]
    r, g, b, _ = browser.execute_script(
        "const c = document.getElementById('canvas').getContext('2d');"
        f"return Array.from(c.getImageData({int((x1 + x2) / 2)}, {int(y1)}, 1, 1).data);")
    assert r > 180 and g < 80 and b < 80, f"box edge of the top detection is not drawn red: {(r, g, b)}"

    middle = float(np.round(np.median(scores), 2))
    counts = []
    for t in (middle, 1.0, 0.0):
        browser.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0];"
                               "s.dispatchEvent(new Event('input'));", t)
        counts.append(int(canvas.get_attribute("data-drawn-boxes")))
        assert counts[-1] == int((scores >= t).sum())
        assert len(browser.find_elements(By.CSS_SELECTOR, "#list li")) == counts[-1]
    assert counts[1] < counts[0] < counts[2] or counts[1] < counts[2], counts
    assert browser.find_element(By.ID, "download").is_enabled()

    op = api["threshold"] if (scores >= api["threshold"]).any() else float(scores.max())
    browser.execute_script("const s = document.getElementById('threshold'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('input'));", op)
    shot = tmp_path / "serve.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("DFUDET_UPDATE_SCREENSHOT"):  # refresh the README image on purpose only, never as a side effect
        shutil.copyfile(shot, SCREENSHOT)


def _canvas_pixels(browser, script: str = "") -> np.ndarray:
    """The page's canvas as an (H, W, 3) array, after running `script` (with `s` the threshold slider)."""
    url = browser.execute_script("const s = document.getElementById('threshold');" + script +
                                 "return document.getElementById('canvas').toDataURL('image/png');")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
        return np.asarray(im.convert("RGB"))


def _redness(pixels: np.ndarray) -> np.ndarray:
    """Red minus green of (..., 3) RGB pixels."""
    return pixels[..., 0].astype(int) - pixels[..., 1].astype(int)


def _set_scale(browser, value: str) -> None:
    """Type a scale into the page's "mm per pixel" field and commit it (the page re-sends the photo)."""
    browser.execute_script("const s = document.getElementById('mm-per-px'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('change'));", value)


def test_page_draws_outlines_and_shows_areas(outline_server: str, browser, tmp_path: Path):
    from selenium.webdriver.common.by import By

    photo = tmp_path / "demo_foot.png"
    Image.fromarray(render_sample(5, 0, 320, healthy=False).image).save(photo)
    photo_size = (320, 320)

    def api(**params: str) -> dict:
        return httpx.post(f"{outline_server}/v1/detect", params={"min_score": 0, **params}, timeout=60,
                          files={"file": (photo.name, photo.read_bytes(), "image/png")}).json()

    scaled = api(mm_per_px="0.5")
    assert scaled["outlines"] is True and any(d["outline"] for d in scaled["detections"])

    browser.get(outline_server + "/")
    _wait(browser, "return window.dfudet && window.dfudet.health !== null")
    scale_input = browser.find_element(By.ID, "mm-per-px")
    assert scale_input.is_displayed(), "an outline model's page offers the scale field"
    scale_input.send_keys("0.5")
    browser.find_element(By.ID, "file").send_keys(str(photo))
    _wait(browser, "return window.dfudet.result !== null && document.getElementById('canvas').dataset.drawnOutlines")
    assert browser.execute_script("return window.dfudet.result") == scaled, "the page shows what the API returns"

    canvas = browser.find_element(By.ID, "canvas")
    threshold = browser.execute_script("return window.dfudet.threshold")
    shown = [d for d, s in zip(scaled["detections"], scaled["scores"]) if s >= threshold]
    assert int(canvas.get_attribute("data-drawn-outlines")) == sum(bool(d["outline"]) for d in shown) > 0
    items = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#list li")]
    assert len(items) == len(shown)
    for text, det in zip(items, shown):
        assert f"area {det['area_px']} px (" in text and "mm²" in text, text

    # the same page drawn without the outlines: the pixels that differ are the outlines, red, and only on them
    with_outlines = _canvas_pixels(browser)
    without = _canvas_pixels(browser, "const r = window.dfudet.result; window.dfudet.result = {...r, detections: null};"
                                      "s.dispatchEvent(new Event('input'));")
    browser.execute_script("window.dfudet.result = arguments[0];"
                           "document.getElementById('threshold').dispatchEvent(new Event('input'));", scaled)
    changed = (with_outlines != without).any(axis=2)
    outlined = np.zeros(changed.shape, bool)
    for det in shown:
        if det["outline"]:
            outlined |= instance_masks.decode(instance_masks.from_polygons(det["outline"], *photo_size))
    near = cv2.dilate(outlined.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)  # + the 2 px stroke
    assert changed.sum() > 20 and not (changed & ~near).any(), "outline pixels drawn away from the outlines"
    assert (_redness(with_outlines[changed]) > _redness(without[changed])).mean() > 0.9, "outlines are not red"

    _set_scale(browser, "")  # no scale: the photo is analysed again, areas in pixels only, the page says so
    _wait(browser, "const r = window.dfudet.result; return r !== null && r.mm_per_px === null")
    assert browser.execute_script("return window.dfudet.result") == api()
    assert "mm²" not in browser.find_element(By.ID, "list").text
    assert "pixels only" in browser.find_element(By.ID, "status").text

    _set_scale(browser, "-1")  # refused by the server; the page shows its message
    _wait(browser, "return document.getElementById('status').classList.contains('error')")
    assert "mm_per_px: scale must be a positive number" in browser.find_element(By.ID, "status").text
