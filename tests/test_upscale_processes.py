"""Super-resolution x4 through the real entry points, against diffusers' upscale pipeline:
`ldm-serve upscale` (CLI), POST /v1/upscale (JSON and multipart, through uvicorn, Redis and the
batching worker) and `ldm-serve client upscale`; what the API refuses, and what the worker says it
can do. The model is a tiny random x4-layout upscaler built here (tests/test_model_upscale.py)."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from testkit.tiny_models import build_tiny_upscaler
from tests.api_harness import KEY_A, ApiServer, encode_png, serve
from tests.conftest import REPO, RedisServer
from tests.test_model_parity import assert_close
from tests.test_model_upscale import GUIDANCE, LOW_H, LOW_W, PROMPT, STEPS, low_res, theirs
from tests.test_parity_processes import served_image
from tests.worker_harness import WorkerProcess

pytestmark = pytest.mark.slow
DB = 10
SEED = 31
COMMON = {"prompt": PROMPT, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE}


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_upscaler(tmp_path_factory.mktemp("upscaler") / "x4")


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, upscaler: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(DB)
    env = {"LDM_MODEL_NAME": "x4", "LDM_DEFAULT_SIZE": "64"}
    worker = WorkerProcess(url, upscaler, tmp_path_factory.mktemp("upscale"), env).start()
    try:
        yield from serve(url, {"LDM_MODEL_NAME": "x4", "LDM_MIN_SIZE": "32"})
    finally:
        worker.stop()


def test_cli_upscale_matches_diffusers(upscaler: Path, tmp_path: Path) -> None:
    low_res().save(tmp_path / "low.png")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "upscale", "--model", str(upscaler), "--image",
         str(tmp_path / "low.png"), "--prompt", PROMPT, "--seed", str(SEED), "--steps",
         str(STEPS), "--guidance", str(GUIDANCE), "--sampler", "euler", "--noise-level", "40",
         "--out", str(tmp_path / "out.png")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{LOW_W}x{LOW_H} -> {4 * LOW_W}x{4 * LOW_H}" in result.stdout
    ours = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert_close(ours[None], theirs(upscaler, "euler", [SEED], noise_level=40))


def test_http_upscale_matches_diffusers(stack: ApiServer, upscaler: Path) -> None:
    """JSON with a data: URL, and multipart with a file; the output is 4x the input."""
    image = encode_png(low_res())
    with stack.client() as client:
        reply = client.post("/v1/upscale", json={
            **COMMON, "sampler": "ddim", "noise_level": 40,
            "image": "data:image/png;base64," + base64.b64encode(image).decode(),
        })  # fmt: skip
        assert reply.status_code == 202, reply.text
        request = reply.json()["request"]
        assert (request["task"], request["width"], request["height"]) == (
            "upscale", 4 * LOW_W, 4 * LOW_H)  # fmt: skip
        assert request["noise_level"] == 40
        assert_close(served_image(client, reply.json()["id"])[None],
                     theirs(upscaler, "ddim", [SEED], noise_level=40))  # fmt: skip

        form = {key: str(value) for key, value in {**COMMON, "sampler": "euler"}.items()}
        reply = client.post("/v1/upscale", data=form, files={"image": ("l.png", image)})
        assert reply.status_code == 202, reply.text
        assert_close(served_image(client, reply.json()["id"])[None],
                     theirs(upscaler, "euler", [SEED]))  # fmt: skip
        job = client.get(f"/v1/jobs/{reply.json()['id']}").json()
        text = Image.open(io.BytesIO(client.get(job["images"][0]).content)).info["parameters"]
        assert "Noise level: 20, Task: upscale" in text


def test_cli_client_upscale_matches_diffusers(
    stack: ApiServer, upscaler: Path, tmp_path: Path
) -> None:
    low_res().save(tmp_path / "low.png")
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "client", "upscale", PROMPT, "--url", stack.url,
         "--api-key", KEY_A, "--image", str(tmp_path / "low.png"), "--seed", str(SEED),
         "--steps", str(STEPS), "--guidance-scale", str(GUIDANCE), "--sampler", "ddim",
         "--noise-level", "40", "-o", str(tmp_path / "out.png")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ours = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert_close(ours[None], theirs(upscaler, "ddim", [SEED], noise_level=40))


def test_the_api_refuses_what_an_upscale_cannot_do(stack: ApiServer) -> None:
    """422 naming the field, before anything is queued; the upscaler does nothing else."""
    image = base64.b64encode(encode_png(low_res())).decode()
    big = base64.b64encode(encode_png(Image.new("RGB", (512, 512)))).decode()
    cases = [
        ({"noise_level": 351}, "noise_level"),
        ({"noise_level": -1}, "noise_level"),
        ({"width": 72}, "width"),  # the input would be 18 px wide: not a multiple of 8
        ({"image": big}, "image"),  # 2048x2048 out: over LDM_MAX_PIXELS
        ({"image": "bm90IGFuIGltYWdl"}, "image"),  # "not an image"
        ({"strength": 0.5}, "strength"),  # not an upscale field
    ]
    with stack.client() as client:
        for extra, field in cases:
            reply = client.post("/v1/upscale", json={"image": image, **COMMON, **extra})
            assert reply.status_code == 422, (extra, reply.text)
            assert field in reply.text, (extra, reply.text)
        reply = client.post("/v1/txt2img", json={**COMMON, "width": 64, "height": 64})
        assert reply.status_code == 422 and "(it runs: upscale)" in reply.text, reply.text
        reply = client.post("/v1/upscale", json={"image": image, **COMMON, "width": 64 * 4})
        assert reply.status_code == 202, reply.text
        assert reply.json()["request"]["width"] == 256  # input resized to 64 wide
        models = client.get("/v1/models").json()
    assert [(m["name"], m["tasks"]) for m in models["data"]] == [("x4", ["upscale"])], models
