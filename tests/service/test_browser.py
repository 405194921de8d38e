"""The web page end to end in headless Chromium (Debian ``chromium`` + ``chromium-driver``,
driven by Selenium): enter the key, upload a video, wait for the results, seek, and check on a
screenshot that the overlay boxes were drawn over the video.

Skips with a reason when Chromium or chromedriver is missing (CI installs them through
scripts/install-test-deps.sh).
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip(
        "headless Chromium not installed (apt-get install chromium chromium-driver; "
        "scripts/install-test-deps.sh does it in CI)",
        allow_module_level=True,
    )
selenium = pytest.importorskip("selenium", reason="pip install selenium (dev extra)")
import app_support as support  # noqa: E402
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

KEY_A = support.KEY_A
TRACK_COLOURS = [(255, 0, 255), (0, 229, 255)]  # PALETTE[0], PALETTE[1] in static/app.js


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, assets: Path) -> Iterator[Any]:
    bundle = support.tiny_bundle(tmp_path_factory.getbasetemp(), assets)
    tmp = tmp_path_factory.mktemp("browser")
    with support.running_server(bundle, tmp, AVASERVE_API_KEYS=KEY_A) as s:
        yield s


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        "--window-size=1200,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _colour_pixels(png: bytes, colours: list[tuple[int, int, int]], tol: int = 40) -> int:
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    hits = np.zeros(rgb.shape[:2], bool)
    for c in colours:
        hits |= (np.abs(rgb - np.asarray(c, np.int16)) <= tol).all(axis=-1)
    return int(hits.sum())


@pytest.mark.slow
def test_upload_and_overlay_drawn(server: Any, browser: Any, assets: Path, tmp_path: Path) -> None:
    video = assets / "video" / "basketball_2people.mp4"
    browser.get(server.url + "/")
    browser.find_element(By.ID, "api-key").send_keys(KEY_A)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    browser.find_element(By.ID, "file").send_keys(str(video))
    stage = browser.find_element(By.ID, "stage")
    before = _colour_pixels(stage.screenshot_as_png, TRACK_COLOURS)
    browser.find_element(By.ID, "upload-btn").click()

    wait = WebDriverWait(browser, 120, poll_frequency=0.5)
    wait.until(
        lambda d: d.execute_script(
            "return document.body.dataset.results || document.body.dataset.error"
        )
    )
    error = browser.execute_script("return document.body.dataset.error")
    assert not error, error
    assert int(browser.execute_script("return document.body.dataset.results")) > 0

    # Seek to a keyframe with people and let the page redraw for that time.
    browser.execute_script(
        "const v = document.getElementById('video'); v.pause(); v.currentTime = 1.0;"
    )
    wait.until(
        lambda d: d.execute_script(
            "const v = document.getElementById('video');"
            "return v.videoWidth > 0 && !v.seeking && "
            "document.getElementById('overlay').dataset.drawnAt === String(v.currentTime)"
        )
    )
    png = stage.screenshot_as_png
    (tmp_path / "stage.png").write_bytes(png)
    drawn = _colour_pixels(png, TRACK_COLOURS)
    print(f"overlay pixels in track colours: {drawn} (before upload: {before})")
    assert before < 50
    assert drawn > 300, f"no overlay boxes on the screenshot (see {tmp_path / 'stage.png'})"
    # The timeline has one row of cells per person.
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline rect")


@pytest.mark.slow
def test_live_mode_streams_a_file_and_draws(server: Any, browser: Any, assets: Path) -> None:
    video = assets / "video" / "basketball_2people.mp4"
    browser.get(server.url + "/")
    browser.find_element(By.ID, "api-key").send_keys(KEY_A)
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    browser.find_element(By.ID, "tab-live").click()
    browser.find_element(By.ID, "live-file").send_keys(str(video))  # starts streaming
    wait = WebDriverWait(browser, 60, poll_frequency=0.5)
    # Annotations arrive over the WebSocket while the file plays (real-time pace).
    wait.until(lambda d: d.execute_script("return window.avaserveLive.received") >= 3)
    assert browser.execute_script("return window.avaserveLive.sent") > 10
    log = browser.find_element(By.ID, "live-log").text
    assert "error" not in log, log
    drawn = _colour_pixels(
        browser.find_element(By.ID, "live-canvas").screenshot_as_png, TRACK_COLOURS
    )
    print(f"live overlay pixels in track colours: {drawn}")


def test_live_mode_says_why_a_stream_was_refused(server: Any, browser: Any, assets: Path) -> None:
    """A wrong key: the handshake is refused (HTTP 401, which browsers hide from scripts) and
    the page says that the key is the problem instead of a bare close code."""
    browser.get(server.url + "/")
    browser.find_element(By.ID, "api-key").send_keys("not-the-key-0123456789abcdef")
    browser.find_element(By.CSS_SELECTOR, "#key-form button").click()
    browser.find_element(By.ID, "tab-live").click()
    browser.find_element(By.ID, "live-file").send_keys(
        str(assets / "video" / "basketball_2people.mp4")
    )
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)
    wait.until(lambda d: "refused" in d.find_element(By.ID, "live-log").text)
    log = browser.find_element(By.ID, "live-log").text
    assert "missing or invalid API key" in log, log
    assert browser.find_element(By.ID, "live-state").text == "refused"
    assert browser.execute_script("return window.avaserveLive.received") == 0
