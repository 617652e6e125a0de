"""The browser playground's sample mode (POST /v1/sample), in headless Chromium against uvicorn,
Redis and a worker serving a tiny class-conditional LDM (classes "class 0".."class 9"): the form
offers sampling only, without prompt fields, with a class picker listing the model's classes and
the model's size and guidance 1.5 as its defaults; a misspelt class shows the API's 422 with near
matches; a class picked by name, and one chosen from the list with the default guidance, give
gallery images whose pixels equal the independent reference of tests/test_model_ldm_classcond.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests import test_model_ldm_classcond as classcond
from tests.api_harness import KEY_A, ApiServer, auth, serve
from tests.conftest import RedisServer
from tests.test_model_parity import assert_close
from tests.test_playground_browser import (
    WAIT_S,
    browser,
    fill,
    gallery_images,
    needs_browser,
    task_options,
)
from tests.worker_harness import WorkerProcess

__all__ = ["browser"]  # a fixture
DB = 14  # apart from tests/test_playground_browser.py's stacks (13, 15)
SEED = 5


@pytest.fixture(scope="module")
def cin_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from testkit.tiny_paper_models import build_tiny_ldm_classcond

    path = tmp_path_factory.mktemp("cin") / "cin"
    return build_tiny_ldm_classcond(path, classes=classcond.CLASSES)


@pytest.fixture(scope="module")
def cin_stack(
    redis_server: RedisServer, cin_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    """An API serving only the class-conditional model (as tests/test_sample_processes.py)."""
    url = redis_server.fresh_db(DB)
    logs = tmp_path_factory.mktemp("playground-cin")
    worker = WorkerProcess(url, cin_model, logs, {"LDM_MODEL_NAME": "cin"}).start()
    try:
        yield from serve(url, {"LDM_API_KEYS": KEY_A, "LDM_MODEL_NAME": "cin",
                               "LDM_MIN_SIZE": str(classcond.SIZE)})  # fmt: skip
    finally:
        worker.stop()


def newest_pixels(driver: Any) -> np.ndarray:
    """The newest gallery image's pixels (RGB), drawn on a canvas in the page."""
    width, height, rgba = driver.execute_script("""
        const img = document.querySelector('#gallery .card img');
        const canvas = document.createElement('canvas');
        Object.assign(canvas, { width: img.naturalWidth, height: img.naturalHeight });
        const context = canvas.getContext('2d');
        context.drawImage(img, 0, 0);
        const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
        return [canvas.width, canvas.height, Array.from(data)];""")
    return np.asarray(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def served_request(stack: ApiServer, job_id: str) -> dict[str, Any]:
    job = httpx.get(f"{stack.url}/v1/jobs/{job_id}", headers=auth(KEY_A), timeout=10).json()
    assert job["status"] == "succeeded", job
    return job["request"]


@needs_browser
@pytest.mark.slow
def test_class_conditional_sampling_in_the_browser(
    cin_stack: ApiServer, cin_model: Path, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.wait import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.05)
    driver.get(f"{cin_stack.url}/")
    driver.find_element(By.ID, "api-key").send_keys(KEY_A)
    driver.find_element(By.NAME, "steps").click()  # the key field's change event
    status = driver.find_element(By.ID, "models-status")
    wait.until(lambda _: "cin: 1 worker(s)" in status.text)

    # a model without text samples only: no prompt, a class picker with its classes
    assert task_options(driver) == {
        "txt2img": False, "img2img": False, "inpaint": False, "upscale": False, "sample": True,
    }  # fmt: skip
    task = Select(driver.find_element(By.NAME, "task"))
    assert task.first_selected_option.get_attribute("value") == "sample"
    for name in ("prompt", "negative_prompt"):
        assert not driver.find_element(By.NAME, name).is_displayed(), name
    assert not driver.find_element(By.ID, "image-panel").is_displayed()
    picker = driver.find_element(By.NAME, "class_label")
    assert picker.is_displayed()
    listed = "return [...document.querySelectorAll('#class-names option')].map((o) => o.value)"
    wait.until(lambda _: len(driver.execute_script(listed)) == classcond.CLASSES)
    choices = driver.execute_script(listed)
    assert choices == [f"{i}: class {i}" for i in range(classcond.CLASSES)]
    width = driver.find_element(By.NAME, "width")
    assert width.is_enabled() and width.get_attribute("placeholder") == str(classcond.SIZE)
    guidance = driver.find_element(By.NAME, "guidance_scale")
    assert guidance.get_attribute("placeholder") == "1.5"  # /v1/sample's default
    note = driver.find_element(By.ID, "sample-note").text
    assert f"{classcond.CLASSES} classes" in note, note

    # a misspelt class: the API's 422 with its near matches, on the picker
    fill(driver, "steps", classcond.STEPS)
    Select(driver.find_element(By.NAME, "sampler")).select_by_visible_text("ddim")
    fill(driver, "seed", SEED)
    fill(driver, "guidance_scale", 3)
    fill(driver, "class_label", "clas 3")
    driver.find_element(By.ID, "submit").click()
    error = driver.find_element(By.ID, "error")
    wait.until(lambda _: error.is_displayed() and "422" in error.text)
    assert "class_label" in error.text and "near matches: 'class 3' (3)" in error.text, error.text
    assert "invalid" in picker.get_attribute("class")
    assert gallery_images(driver) == []

    # class 3 by name: the gallery's image is the reference's
    label = driver.find_element(By.ID, "job-status")
    fill(driver, "class_label", "class 3")
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda _: label.get_attribute("data-status") == "succeeded")
    wait.until(lambda _: [image["width"] for image in gallery_images(driver)] == [classcond.SIZE])
    assert not error.is_displayed()
    assert gallery_images(driver)[0]["task"] == "sample"
    assert_close(newest_pixels(driver)[None], classcond.reference(cin_model, 3, SEED, 3.0)[None])
    request = served_request(cin_stack, label.get_attribute("data-job"))
    assert (request["task"], request["class_label"], request["steps"], request["sampler"]) == (
        "sample", 3, classcond.STEPS, "ddim")  # fmt: skip
    card = driver.find_element(By.CSS_SELECTOR, "#gallery .card").text
    for part in ("class 3", "sample", f"{classcond.SIZE}x{classcond.SIZE}", f"seed {SEED}"):
        assert part in card, card

    # the list's choice for class 7 ("7: class 7"), guidance left to its default (1.5)
    first_job = label.get_attribute("data-job")
    fill(driver, "class_label", choices[7])
    guidance.clear()
    driver.find_element(By.ID, "submit").click()
    wait.until(lambda _: label.get_attribute("data-job") != first_job)
    wait.until(lambda _: label.get_attribute("data-status") == "succeeded")
    wait.until(lambda _: len(gallery_images(driver)) == 2 and gallery_images(driver)[0]["width"])
    assert_close(newest_pixels(driver)[None], classcond.reference(cin_model, 7, SEED, 1.5)[None])
    request = served_request(cin_stack, label.get_attribute("data-job"))
    assert (request["class_label"], request["guidance_scale"]) == (7, 1.5), request

    problems = ("Content Security Policy", "Uncaught")  # a blocked load, a script error
    log = [entry["message"] for entry in driver.get_log("browser")]
    assert not [line for line in log if any(problem in line for problem in problems)], log
