"""The browser playground at `/`: its files as served (fast), and a real headless Chromium (the
system's chromium and chromium-driver, through Selenium) driving it against uvicorn, Redis and a
batching worker (slow): the API key field, a 422 shown on its field, txt2img with live progress
from the event stream into the gallery, inpainting with a mask painted on the canvas, and the
gallery back from localStorage after a reload; with a tiny x4 upscaler served, the form offers
upscaling only and the gallery shows the 4x image. No Content-Security-Policy violation on the
way. (A class-conditional model's sample mode: tests/test_playground_sample_browser.py.)"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.routes.playground import ASSETS, STATIC
from tests.api_harness import KEY_A, ApiServer, auth, serve
from tests.conftest import RedisServer
from tests.worker_harness import WorkerProcess, tiny_model

__all__ = ["tiny_model"]
DB = 13
UPSCALE_DB = 15  # the upscaler's stack, alive beside the other one
SIZE = 32
CSP = "default-src 'self'; img-src 'self' blob: data:"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
HAVE_BROWSER = CHROMIUM.is_file() and CHROMEDRIVER.is_file()
needs_browser = pytest.mark.skipif(
    not HAVE_BROWSER or importlib.util.find_spec("selenium") is None,
    reason="needs the system chromium and chromium-driver (apt) and selenium (pip)",
)
WAIT_S = 60


@pytest.fixture()
def bare_api(redis_server: RedisServer) -> Iterator[ApiServer]:
    """An API without workers: enough to serve the page."""
    yield from serve(redis_server.fresh_db(DB))


def test_page_and_assets_are_served_with_the_csp(bare_api: ApiServer) -> None:
    expected = {
        "/": "text/html",
        "/playground/playground.js": "text/javascript",
        "/playground/api.js": "text/javascript",  # an ES module: only a JavaScript type runs
        "/playground/sample.js": "text/javascript",
        "/playground/playground.css": "text/css",
    }
    # every file shipped is served, and nothing else
    assert {f"/playground/{name}" for name in ASSETS} | {"/"} == set(expected)
    assert {path.name for path in STATIC.iterdir()} == {"index.html", *ASSETS}
    bodies = {}
    with httpx.Client(base_url=bare_api.url, timeout=10) as http:  # no key: the page is public
        for path, media_type in expected.items():
            reply = http.get(path)
            assert reply.status_code == 200, (path, reply.text)
            assert reply.headers["content-type"].split(";")[0] == media_type, path
            assert reply.headers["content-security-policy"] == CSP, path
            assert reply.headers["x-content-type-options"] == "nosniff", path
            assert not re.search(r"https?://", reply.text), f"{path} loads from another origin"
            bodies[path] = reply.text
        assert http.get("/playground/other.js").status_code == 404
        assert http.get("/playground/index.html").status_code == 404
        assert "/" not in http.get("/openapi.json").json()["paths"]
    html = bodies["/"]
    # what the CSP would block: inline scripts, style attributes, inline event handlers
    assert re.findall(r"<script[^>]*>", html) == [
        '<script type="module" src="/playground/playground.js">'
    ]
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html)
    # everything the page and its modules load is one of the assets
    loaded = set(re.findall(r'(?:href|src)="(/playground/[^"]+)"', html))
    for path in expected:
        if path.endswith(".js"):
            imports = re.findall(r"^import .* from '\./([^']+)';$", bodies[path], re.M)
            loaded |= {f"/playground/{name}" for name in imports}
    assert loaded == set(expected) - {"/"}, loaded


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(DB)
    env = {"LDM_FAULT_STEP_SLEEP": "0.2"}  # a 20-step job runs 4 s: progress to watch
    worker = WorkerProcess(url, tiny_model, tmp_path_factory.mktemp("playground"), env).start()
    try:
        yield from serve(url, {"LDM_API_KEYS": KEY_A, "LDM_MIN_SIZE": str(SIZE)})
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def upscaler_stack(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API serving only a tiny random x4 upscaler (as tests/test_upscale_processes.py)."""
    from testkit.tiny_models import build_tiny_upscaler

    model = build_tiny_upscaler(tmp_path_factory.mktemp("upscaler") / "x4")
    url = redis_server.fresh_db(UPSCALE_DB)
    logs = tmp_path_factory.mktemp("playground-x4")
    worker = WorkerProcess(url, model, logs, {"LDM_MODEL_NAME": "x4"}).start()
    try:
        yield from serve(url, {"LDM_API_KEYS": KEY_A, "LDM_MODEL_NAME": "x4",
                               "LDM_MIN_SIZE": str(SIZE)})  # fmt: skip
    finally:
        worker.stop()


@pytest.fixture()
def browser() -> Iterator[Any]:
    """Headless Chromium from the system packages (Selenium Manager never runs: the driver's
    path is given)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--window-size=1200,900"):  # fmt: skip
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(
        options=options, service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER))
    )
    try:
        yield driver
    finally:
        driver.quit()


def init_png(path: Path) -> Path:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    pixels = np.stack([x * 8, y * 8, (x + y) * 4], -1).clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def gallery_images(driver: Any) -> list[dict[str, Any]]:
    """The gallery's loaded images, newest card first: its job, task, src and natural width."""
    return driver.execute_script("""
        return [...document.querySelectorAll('#gallery .card img')].map((img) => ({
          job: img.closest('.card').dataset.jobId, task: img.closest('.card').dataset.task,
          src: img.src, width: img.complete ? img.naturalWidth : 0 }));""")


def task_options(driver: Any) -> dict[str, bool]:
    """The task select's options: value -> enabled."""
    return driver.execute_script("""
        return Object.fromEntries([...document.getElementById('task').options].map(
          (option) => [option.value, !option.disabled]));""")


def fill(driver: Any, name: str, value: object) -> None:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.NAME, name)
    element.clear()
    element.send_keys(str(value))


@needs_browser
@pytest.mark.slow
def test_txt2img_and_inpainting_in_the_browser(
    stack: ApiServer, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.05)
    driver.get(f"{stack.url}/")
    status = driver.find_element(By.ID, "models-status")
    wait.until(lambda _: "Authorization" in status.text)  # no key yet: the 401 is shown

    driver.find_element(By.ID, "api-key").send_keys(KEY_A)
    driver.find_element(By.NAME, "prompt").send_keys("a red circle on the left")
    wait.until(lambda _: "1 worker(s)" in status.text)  # the key went with GET /v1/models
    # what this (SD-layout) model's worker runs; upscaling is an upscaler's, sampling a model's
    # without text
    assert task_options(driver) == {
        "txt2img": True, "img2img": True, "inpaint": True, "upscale": False, "sample": False,
    }  # fmt: skip

    # a 422 is shown on its field
    fill(driver, "width", 36)
    fill(driver, "height", SIZE)
    driver.find_element(By.ID, "submit").click()
    error = driver.find_element(By.ID, "error")
    wait.until(lambda _: error.is_displayed() and "422" in error.text)
    assert "width" in error.text and "multiple of 8" in error.text, error.text
    assert "invalid" in driver.find_element(By.NAME, "width").get_attribute("class")

    # txt2img: progress from the event stream, then the image in the gallery
    fill(driver, "width", SIZE)
    fill(driver, "steps", 20)
    fill(driver, "seed", 3)
    driver.find_element(By.ID, "submit").click()
    progress = driver.find_element(By.ID, "progress")
    wait.until(lambda _: 0 < float(progress.get_attribute("value")) < 20)
    assert progress.get_attribute("max") == "20"
    assert not error.is_displayed()
    wait.until(lambda _: [image["width"] for image in gallery_images(driver)] == [SIZE])
    (first,) = gallery_images(driver)
    assert first["src"].startswith("blob:") and first["task"] == "txt2img"
    label = driver.find_element(By.ID, "job-status")
    assert label.get_attribute("data-status") == "succeeded"
    card = driver.find_element(By.CSS_SELECTOR, "#gallery .card")
    assert "seed 3" in card.text and f"{SIZE}x{SIZE}" in card.text and "20 steps" in card.text

    # inpainting: an init image, a mask painted over its left half
    Select(driver.find_element(By.NAME, "task")).select_by_value("inpaint")
    driver.find_element(By.ID, "init-file").send_keys(str(init_png(tmp_path / "init.png")))
    canvas = driver.find_element(By.ID, "mask-canvas")
    wait.until(lambda _: canvas.is_displayed() and canvas.get_attribute("width") == str(SIZE))
    side = canvas.size["width"]
    strokes = ActionChains(driver).move_to_element_with_offset(canvas, -side // 4, -side // 3)
    strokes.click_and_hold().move_by_offset(0, side // 3).move_by_offset(0, side // 3)
    strokes.release().perform()
    painted = driver.execute_script("""
        const canvas = document.getElementById('mask-canvas');
        const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
        let left = 0, right = 0;
        for (let i = 3; i < data.length; i += 4) {
          if (data[i] > 0) (((i - 3) / 4) % canvas.width < canvas.width / 2 ? left++ : right++);
        }
        return [left, right];""")
    assert painted[0] > 0 and painted[1] == 0, painted
    fill(driver, "steps", 8)
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda _: label.get_attribute("data-job") != first["job"])
    inpaint_id = label.get_attribute("data-job")
    wait.until(lambda _: label.get_attribute("data-status") == "succeeded")
    wait.until(lambda _: [image["width"] for image in gallery_images(driver)] == [SIZE, SIZE])
    assert [image["task"] for image in gallery_images(driver)] == ["inpaint", "txt2img"]
    height = driver.execute_script("window.scrollTo(0, 0); return document.body.scrollHeight")
    driver.set_window_size(1200, height + 150)  # the whole page (the window has some chrome)
    screenshot = driver.get_screenshot_as_png()
    assert screenshot.startswith(b"\x89PNG")
    if target := os.environ.get("LDM_PLAYGROUND_SCREENSHOT"):
        Path(target).write_bytes(screenshot)

    job = httpx.get(f"{stack.url}/v1/jobs/{inpaint_id}", headers=auth(KEY_A), timeout=10).json()
    assert job["status"] == "succeeded", job
    assert job["request"]["task"] == "inpaint" and job["request"]["width"] == SIZE, job

    # the gallery (and the key) come back from localStorage
    driver.refresh()
    wait.until(lambda _: [image["width"] for image in gallery_images(driver)] == [SIZE, SIZE])
    assert [image["job"] for image in gallery_images(driver)] == [inpaint_id, first["job"]]
    assert driver.find_element(By.ID, "api-key").get_attribute("value") == KEY_A

    problems = ("Content Security Policy", "Uncaught")  # a blocked load, a script error
    log = [entry["message"] for entry in driver.get_log("browser")]
    assert not [line for line in log if any(problem in line for problem in problems)], log


@needs_browser
@pytest.mark.slow
def test_upscaling_in_the_browser(upscaler_stack: ApiServer, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.05)
    driver.get(f"{upscaler_stack.url}/")
    driver.find_element(By.ID, "api-key").send_keys(KEY_A)
    driver.find_element(By.NAME, "prompt").click()  # the key field's change event
    status = driver.find_element(By.ID, "models-status")
    wait.until(lambda _: "x4: 1 worker(s)" in status.text)

    # an upscaler runs nothing else: the form switched to it, with its own fields
    assert task_options(driver) == {
        "txt2img": False, "img2img": False, "inpaint": False, "upscale": True, "sample": False,
    }  # fmt: skip
    task = Select(driver.find_element(By.NAME, "task"))
    assert task.first_selected_option.get_attribute("value") == "upscale"
    assert driver.find_element(By.ID, "upscale-panel").is_displayed()
    assert not driver.find_element(By.ID, "image-panel").is_displayed()  # strength, mask
    assert not driver.find_element(By.NAME, "width").is_enabled()

    # no image yet: said on its field, nothing sent
    driver.find_element(By.ID, "submit").click()
    error = driver.find_element(By.ID, "error")
    wait.until(lambda _: error.is_displayed() and "choose an image" in error.text)
    assert "invalid" in driver.find_element(By.NAME, "image").get_attribute("class")

    # the API's bound on the noise level, shown on its field
    driver.find_element(By.ID, "upscale-file").send_keys(str(init_png(tmp_path / "low.png")))
    size = driver.find_element(By.ID, "upscale-size")
    out = 4 * SIZE
    wait.until(lambda _: size.text == f"{SIZE}x{SIZE} in, {out}x{out} out")
    assert driver.find_element(By.ID, "upscale-preview").is_displayed()
    fill(driver, "noise_level", 351)
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda _: error.is_displayed() and "422" in error.text)
    assert "noise_level" in error.text, error.text
    assert "invalid" in driver.find_element(By.NAME, "noise_level").get_attribute("class")

    # an empty prompt is fine; the gallery shows the 4x image, the task and the noise level
    fill(driver, "noise_level", 40)
    fill(driver, "steps", 4)
    fill(driver, "seed", 5)
    driver.find_element(By.ID, "submit").click()
    label = driver.find_element(By.ID, "job-status")
    wait.until(lambda _: label.get_attribute("data-status") == "succeeded")
    wait.until(lambda _: [image["width"] for image in gallery_images(driver)] == [out])
    assert [image["task"] for image in gallery_images(driver)] == ["upscale"]
    assert not error.is_displayed()
    card = driver.find_element(By.CSS_SELECTOR, "#gallery .card").text
    for part in ("(no prompt)", "upscale", f"{out}x{out} (x4)", "noise level 40", "seed 5"):
        assert part in card, card

    job_id = label.get_attribute("data-job")
    job = httpx.get(f"{upscaler_stack.url}/v1/jobs/{job_id}", headers=auth(KEY_A), timeout=10)
    request = job.json()["request"]
    assert (request["task"], request["width"], request["noise_level"]) == ("upscale", out, 40)

    problems = ("Content Security Policy", "Uncaught")
    log = [entry["message"] for entry in driver.get_log("browser")]
    assert not [line for line in log if any(problem in line for problem in problems)], log
