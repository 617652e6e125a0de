"""The AUTOMATIC1111 dialect with the real `webuiapi` package as the client, against uvicorn,
Redis and a batching worker: txt2img and img2img with a mask give the native API's images for the
same seed and settings; progress while a job runs, interrupt, models, samplers and options."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import webuiapi
from PIL import Image

from tests.api_harness import KEY_A, ApiServer, encode_png, native_first_image, serve
from tests.conftest import RedisServer
from tests.worker_harness import WorkerProcess, tiny_model

__all__ = ["tiny_model"]
pytestmark = pytest.mark.slow
DB = 11
SIZE = 32


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(DB)
    env = {"LDM_FAULT_STEP_SLEEP": "0.2"}  # a 50-step job runs 10 s: progress to watch
    worker = WorkerProcess(url, tiny_model, tmp_path_factory.mktemp("a1111"), env).start()
    try:
        yield from serve(url, {"LDM_MIN_SIZE": "32", "LDM_SYNC_TIMEOUT": "60"})
    finally:
        worker.stop()


@pytest.fixture()
def api(stack: ApiServer) -> webuiapi.WebUIApi:
    client = webuiapi.WebUIApi(baseurl=f"{stack.url}/sdapi/v1")
    client.set_auth("ldm", KEY_A)  # HTTP Basic, as for A1111's --api-auth: the key as password
    return client


def init_image() -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    return Image.fromarray(np.stack([x * 8, y * 8, (x + y) * 4], -1).clip(0, 255).astype(np.uint8))


def white_left() -> Image.Image:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:, : SIZE // 2] = 255
    return Image.fromarray(mask)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def native(stack: ApiServer, route: str, **kwargs: object) -> np.ndarray:
    return pixels(Image.open(io.BytesIO(native_first_image(stack, route, **kwargs))))


COMMON = {"seed": 9, "steps": 4, "cfg_scale": 5, "width": SIZE, "height": SIZE}
NATIVE = {"seed": 9, "steps": 4, "guidance_scale": 5.0, "width": SIZE, "height": SIZE}


def test_txt2img_equals_the_native_api(stack: ApiServer, api: webuiapi.WebUIApi) -> None:
    result = api.txt2img(prompt="a red square", sampler_name="DDIM", batch_size=2, **COMMON)
    assert len(result.images) == 2
    assert result.info["all_seeds"] == [9, 10] and len(result.info["infotexts"]) == 2
    assert "Sampler: DDIM" in result.info["infotexts"][0]
    # webuiapi sends eta=1.0 unless told otherwise, and A1111's DDIM honours it: so do we
    theirs = native(stack, "/v1/txt2img", json={"prompt": "a red square", "sampler": "ddim",
                                                "eta": 1.0, **NATIVE})  # fmt: skip
    assert np.array_equal(pixels(result.images[0]), theirs)


def test_img2img_with_a_mask_is_the_native_inpainting(
    stack: ApiServer, api: webuiapi.WebUIApi
) -> None:
    result = api.img2img(images=[init_image()], mask_image=white_left(), prompt="a blue circle",
                         denoising_strength=1.0, sampler_name="Euler", **COMMON)  # fmt: skip
    form = {k: str(v) for k, v in NATIVE.items()} | {"prompt": "a blue circle", "sampler": "euler"}
    files = {"init_image": ("i.png", encode_png(init_image()), "image/png"),
             "mask_image": ("m.png", encode_png(white_left()), "image/png")}  # fmt: skip
    theirs = native(stack, "/v1/inpaint", data=form, files=files)
    ours = pixels(result.images[0])
    assert np.array_equal(ours, theirs)
    assert np.array_equal(ours[:, SIZE // 2 :], pixels(init_image())[:, SIZE // 2 :])  # A1111 keeps


def test_progress_while_running_then_interrupt(api: webuiapi.WebUIApi) -> None:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = api.txt2img(prompt="a slow one", sampler_name="DDIM",
                                            **{**COMMON, "steps": 50})  # fmt: skip
        except RuntimeError as error:  # webuiapi raises on any non-200
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    deadline, seen = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        progress = api.get_progress()
        if progress["progress"] > 0:
            seen = progress
            break
        time.sleep(0.1)
    assert seen is not None and seen["state"]["sampling_steps"] == 50, seen
    assert 0 < seen["state"]["sampling_step"] < 50 and seen["eta_relative"] > 0
    api.interrupt()
    thread.join(timeout=30)
    assert "error" in outcome and "canceled" in str(outcome["error"]), outcome
    assert api.get_progress()["state"]["interrupted"] is True


def test_models_samplers_and_options(api: webuiapi.WebUIApi) -> None:
    assert [m["model_name"] for m in api.get_sd_models()] == ["default"]
    names = {s["name"]: s["aliases"] for s in api.get_samplers()}
    assert names["DDIM"] == ["ddim"] and names["Euler a"] == ["euler_a"]
    assert names["DPM++ 2M Karras"] == ["dpmpp_2m karras"]
    assert api.get_options()["sd_model_checkpoint"] == "default"
    assert api.get_scripts() == {"txt2img": [], "img2img": []}  # what set_auth probes
    api.set_options({"sd_model_checkpoint": "default"})
    refused = api.session.post(f"{api.baseurl}/options", json={"sd_model_checkpoint": "nope"})
    assert refused.status_code == 422 and "sd_model_checkpoint" in json.dumps(refused.json())
    unknown = api.session.post(f"{api.baseurl}/txt2img", json={"prompt": "x",
                                                               "sampler_name": "Nope"})  # fmt: skip
    assert unknown.status_code == 422 and "sampler_name" in unknown.text


@pytest.mark.parametrize(
    ("chosen", "reported"),
    [
        ({"sampler_index": "DPM++ 2M Karras"}, "DPM++ 2M Karras"),  # the older field name
        ({"sampler_name": "Euler", "scheduler": "karras"}, "Euler Karras"),
        ({}, "DDIM"),  # none chosen: the native default ran
    ],
)
def test_info_names_the_sampler_that_ran(stack: ApiServer, chosen: dict, reported: str) -> None:
    """info's sampler_name was the request's sampler_name echoed: null for the others."""
    with stack.client() as client:
        reply = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", **COMMON, **chosen})
    assert reply.status_code == 200, reply.text
    info = json.loads(reply.json()["info"])
    assert info["sampler_name"] == reported
    assert f"Sampler: {reported}," in info["infotexts"][0]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("txt2img", {"cfg_scale": -1}, "cfg_scale"),
        ("txt2img", {"batch_size": 0}, "batch_size"),
        ("img2img", {"init_images": [], "denoising_strength": 0.5}, "init_images"),
        ("img2img", {"denoising_strength": 0.01}, "denoising_strength"),  # no step at 4 steps
        ("img2img", {"mask": "not base64!"}, "mask"),
        # asked for, these would change the image and are not run: refused, never dropped
        ("txt2img", {"enable_hr": True, "hr_scale": 2}, "enable_hr"),
        ("txt2img", {"restore_faces": True}, "restore_faces"),
        ("txt2img", {"tiling": True}, "tiling"),
        ("txt2img", {"subseed": 3, "subseed_strength": 0.5}, "subseed_strength"),
        ("txt2img", {"script_name": "x/y/z plot"}, "script_name"),
        ("img2img", {"alwayson_scripts": {"controlnet": {"args": [{}]}}}, "alwayson_scripts"),
        (
            "txt2img",
            {"override_settings": {"CLIP_stop_at_last_layers": 2}},
            "override_settings.CLIP_stop_at_last_layers",
        ),  # fmt: skip
    ],
)
def test_a_422_names_the_a1111_field_sent(
    stack: ApiServer, route: str, body: dict, field: str
) -> None:
    """Not the native name it maps to (guidance_scale, strength, ...): the caller sent cfg_scale."""
    request = {"prompt": "a fox", **COMMON}
    if route == "img2img":
        request["init_images"] = [base64.b64encode(encode_png(init_image())).decode()]
    with stack.client() as client:
        reply = client.post(f"/sdapi/v1/{route}", json={**request, **body})
    assert reply.status_code == 422, reply.text
    assert [error["field"] for error in reply.json()["errors"]] == [field], reply.text
