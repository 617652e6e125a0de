"""The client dialects against `ldm-serve up` as users run it, with the shipped model and with a
tiny SD model: the real `openai` SDK (generate, edit, variation) and the real `webuiapi` package
(txt2img, img2img with a mask) get the native API's images for the same seed and settings."""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import webuiapi
from PIL import Image

from tests.api_harness import encode_png, wait_ready
from tests.conftest import REPO, RedisServer, free_port
from tests.worker_harness import tiny_model

__all__ = ["tiny_model"]
pytestmark = pytest.mark.slow  # two `up` stacks and a dozen jobs: full tier only
DB = 12
SEED, STEPS, GUIDANCE = 17, 6, 5.0


@dataclass
class Up:
    url: str
    size: int


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module", params=["shipped", "tiny-sd"])
def up(
    request: pytest.FixtureRequest,
    redis_server: RedisServer,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Up]:
    """`ldm-serve up` on a Redis that answers (so it starts none), no keys, its own ports."""
    root = tmp_path_factory.mktemp(f"up-{request.param}")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("LDM_", "REDIS_"))},
        "REDIS_URL": redis_server.fresh_db(DB),
        "XDG_STATE_HOME": str(root / "state"),
        "LDM_METRICS_PORT": str(free_port()),
        "LDM_WEBHOOK_METRICS_PORT": str(free_port()),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "LDM_SHUTDOWN_GRACE": "5",
    }
    size = 64  # the shipped model's own size; `up` makes it the default for that model
    if request.param == "tiny-sd":
        env |= {"LDM_MODEL": str(tiny_model), "LDM_MIN_SIZE": "32", "LDM_DEFAULT_SIZE": "32"}
        size = 32
    log = root / "up.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log)
        yield Up(url, size)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def native(up: Up, route: str, **kwargs: object) -> np.ndarray:
    """First image of the same job through the native API."""
    with httpx.Client(base_url=up.url, timeout=30) as http:
        reply = http.post(route, **kwargs)  # type: ignore[arg-type]
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        deadline = time.monotonic() + 120
        while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "succeeded", job
        return pixels(http.get(job["images"][0]).content)


def scene(size: int) -> Image.Image:
    """A white canvas with a red square on the right (an init image both models can read)."""
    array = np.full((size, size, 3), 255, np.uint8)
    array[size // 4 : 3 * size // 4, size // 2 + 2 : size - 4] = (220, 30, 30)
    return Image.fromarray(array)


def left_half(size: int, transparent: bool) -> Image.Image:
    """The left half marked for repainting: transparent (OpenAI) or white (A1111, native)."""
    if transparent:
        alpha = np.full((size, size), 255, np.uint8)
        alpha[:, : size // 2] = 0
        return Image.fromarray(np.dstack([np.zeros((size, size, 3), np.uint8), alpha]), "RGBA")
    white = np.zeros((size, size), np.uint8)
    white[:, : size // 2] = 255
    return Image.fromarray(white)


def test_openai_sdk_against_up(up: Up) -> None:
    client = openai.OpenAI(base_url=f"{up.url}/v1", api_key="unused", max_retries=0, timeout=120)
    extra = {"seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE, "sampler": "ddim"}
    size = f"{up.size}x{up.size}"
    made = client.images.generate(
        prompt="a green circle on the left",
        size=size,  # type: ignore[arg-type]
        response_format="b64_json",
        extra_body=extra,
    )
    theirs = native(
        up,
        "/v1/txt2img",
        json={"prompt": "a green circle on the left", "width": up.size, "height": up.size, **extra},
    )
    assert np.array_equal(pixels(base64.b64decode(made.data[0].b64_json or "")), theirs)
    assert made.usage is not None and made.usage.output_tokens > 0

    init = encode_png(scene(up.size))
    edited = client.images.edit(
        image=("scene.png", init, "image/png"),
        prompt="a blue square on the left",
        mask=("mask.png", encode_png(left_half(up.size, True)), "image/png"),
        response_format="b64_json",
        extra_body=extra,
    )
    form = {k: str(v) for k, v in extra.items()} | {"prompt": "a blue square on the left"}
    files = {
        "init_image": ("i.png", init, "image/png"),
        "mask_image": ("m.png", encode_png(left_half(up.size, False)), "image/png"),
    }
    ours = pixels(base64.b64decode(edited.data[0].b64_json or ""))
    assert np.array_equal(ours, native(up, "/v1/inpaint", data=form, files=files))

    varied = client.images.create_variation(
        image=("scene.png", init, "image/png"), response_format="b64_json", extra_body=extra
    )
    variation = pixels(base64.b64decode(varied.data[0].b64_json or ""))
    assert variation.shape == (up.size, up.size, 3)  # img2img at 0.75 with the empty prompt:
    assert np.abs(variation - pixels(init)).mean() > 0.5  # no native twin (it wants a prompt)


def test_webuiapi_against_up(up: Up) -> None:
    api = webuiapi.WebUIApi(baseurl=f"{up.url}/sdapi/v1")
    common = {
        "seed": SEED,
        "steps": STEPS,
        "cfg_scale": GUIDANCE,
        "sampler_name": "DDIM",
        "width": up.size,
        "height": up.size,
    }
    made = api.txt2img(prompt="a green circle on the left", **common)
    buffer = io.BytesIO()
    made.image.save(buffer, format="PNG")
    theirs = native(
        up,
        "/v1/txt2img",
        json={
            "prompt": "a green circle on the left",
            "seed": SEED,
            "steps": STEPS,
            "guidance_scale": GUIDANCE,
            "sampler": "ddim",
            "eta": 1.0,  # webuiapi sends eta=1.0 and A1111's DDIM honours it
            "width": up.size,
            "height": up.size,
        },
    )
    assert np.array_equal(pixels(buffer.getvalue()), theirs)
    assert [m["model_name"] for m in api.get_sd_models()]

    edited = api.img2img(
        images=[scene(up.size)],
        mask_image=left_half(up.size, False),
        prompt="a blue square on the left",
        denoising_strength=1.0,
        inpainting_fill=1,
        **common,
    )
    buffer = io.BytesIO()
    edited.image.save(buffer, format="PNG")
    form = {
        "prompt": "a blue square on the left",
        "seed": str(SEED),
        "steps": str(STEPS),
        "guidance_scale": str(GUIDANCE),
        "sampler": "ddim",
        "eta": "1.0",
        "strength": "1.0",
    }
    files = {
        "init_image": ("i.png", encode_png(scene(up.size)), "image/png"),
        "mask_image": ("m.png", encode_png(left_half(up.size, False)), "image/png"),
    }
    assert np.array_equal(
        pixels(buffer.getvalue()), native(up, "/v1/inpaint", data=form, files=files)
    )
