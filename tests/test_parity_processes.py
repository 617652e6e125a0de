"""Pixel parity with diffusers through the real entry points: `ldm-serve generate` and HTTP.

test_model_parity.py checks the model in-process; here the same weights and seeds go through a
CLI subprocess and through uvicorn + Redis + the batching worker, and must give diffusers' image.
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.api_harness import ApiServer, encode_png, serve
from tests.conftest import REPO, RedisServer
from tests.test_model_parity import GUIDANCE, PROMPT, SIZE, STEPS, assert_close, diffusers_images
from tests.worker_harness import WorkerProcess, tiny_model

__all__ = ["tiny_model"]
pytestmark = pytest.mark.slow
SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m")
SEED = 21
DB = 9
ACTIVE = ("queued", "running")


def cli_image(model: Path, out: Path, *flags: str) -> np.ndarray:
    """One image from `ldm-serve generate` in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "generate", "--model", str(model), "--prompt", PROMPT,
         "--seed", str(SEED), "--steps", str(STEPS), "--guidance", str(GUIDANCE),
         "--width", str(SIZE), "--height", str(SIZE), "--out", str(out), *flags],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return np.asarray(Image.open(out).convert("RGB"))


def test_cli_generate_matches_diffusers(tiny_model: Path, tmp_path: Path) -> None:
    for sampler in SAMPLERS:
        ours = cli_image(tiny_model, tmp_path / f"{sampler}.png", "--sampler", sampler)
        assert_close(ours[None], diffusers_images(tiny_model, sampler, "", [SEED]))


def test_cli_euler_a_eta_zero_is_euler_and_eta_one_is_not(tmp_path: Path) -> None:
    """On the shipped model: `--eta 0` turns Euler a into Euler; `--eta 1` visibly differs."""
    model = REPO / "models" / "default"
    common = ("--width", "64", "--height", "64", "--guidance", "3")
    euler = cli_image(model, tmp_path / "e.png", "--sampler", "euler", *common).astype(int)
    eta0 = cli_image(model, tmp_path / "a0.png", "--sampler", "euler_a", "--eta", "0", *common)
    eta1 = cli_image(model, tmp_path / "a1.png", "--sampler", "euler_a", "--eta", "1", *common)
    assert np.abs(eta0.astype(int) - euler).mean() <= 1.0  # within 1/255 on average
    moved = np.abs(eta1.astype(int) - euler)  # a flat background with one shape on it
    assert moved.mean() > 2.0 and (moved > 64).mean() > 0.005, (moved.mean(), (moved > 64).mean())


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(DB)
    worker = WorkerProcess(url, tiny_model, tmp_path_factory.mktemp("parity"), {}).start()
    try:
        yield from serve(url, {"LDM_MIN_SIZE": "32", "LDM_DEFAULT_SIZE": "32"})
    finally:
        worker.stop()


def test_http_matches_diffusers(stack: ApiServer, tiny_model: Path) -> None:
    with stack.client() as client:
        ids = [
            client.post("/v1/txt2img", json={
                "prompt": PROMPT, "seed": SEED, "steps": STEPS, "guidance_scale": GUIDANCE,
                "sampler": sampler, "width": SIZE, "height": SIZE,
            }).json()["id"]
            for sampler in SAMPLERS
        ]  # fmt: skip
        for sampler, job_id in zip(SAMPLERS, ids, strict=True):
            deadline = time.monotonic() + 60
            while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in (
                "queued",
                "running",
            ):
                assert time.monotonic() < deadline, job
                time.sleep(0.1)
            assert job["status"] == "succeeded", job
            png = client.get(job["images"][0]).content
            served = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            assert_close(served[None], diffusers_images(tiny_model, sampler, "", [SEED]))


def test_cli_img2img_and_inpaint_match_diffusers(tiny_model: Path, tmp_path: Path) -> None:
    """`--init-image` (SDEdit) and `--init-image --mask` (a 4-channel model) against diffusers'
    img2img and inpainting pipelines, image for image."""
    from tests import test_model_img2img as img2img
    from tests import test_model_inpaint as inpaint

    init, mask = tmp_path / "init.png", tmp_path / "mask.png"
    img2img.init_image().save(init)
    inpaint.mask_image().save(mask)
    steps = ("--steps", str(img2img.STEPS))
    ours = cli_image(tiny_model, tmp_path / "i2i.png", "--init-image", str(init),
                     "--strength", "0.6", "--sampler", "euler", *steps)  # fmt: skip
    assert_close(ours[None], img2img.theirs(tiny_model, "euler", 0.6, [SEED]))
    ours = cli_image(tiny_model, tmp_path / "inpaint.png", "--init-image", str(init),
                     "--mask", str(mask), "--sampler", "ddim", *steps)  # fmt: skip
    assert_close(ours[None], inpaint.theirs(tiny_model, "ddim", 1.0, [SEED]))


def served_image(client, job_id: str) -> np.ndarray:
    """Poll a job until it ends; its first image as an RGB array."""
    deadline = time.monotonic() + 60
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] in ACTIVE:
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert job["status"] == "succeeded", job
    return np.asarray(Image.open(io.BytesIO(client.get(job["images"][0]).content)).convert("RGB"))


def test_http_img2img_and_inpaint_match_diffusers(stack: ApiServer, tiny_model: Path) -> None:
    """POST /v1/img2img as JSON (a data: URL) and /v1/inpaint as multipart files, through the
    API, Redis and the batching worker, against diffusers' two pipelines."""
    import base64

    from tests import test_model_img2img as img2img
    from tests import test_model_inpaint as inpaint

    init = encode_png(img2img.init_image())
    common = {"prompt": PROMPT, "seed": SEED, "steps": img2img.STEPS, "guidance_scale": GUIDANCE}
    with stack.client() as client:
        reply = client.post("/v1/img2img", json={
            **common, "sampler": "euler", "strength": 0.6,
            "init_image": "data:image/png;base64," + base64.b64encode(init).decode(),
        })  # fmt: skip
        assert reply.status_code == 202, reply.text
        assert reply.json()["request"]["task"] == "img2img"
        ours = served_image(client, reply.json()["id"])
        assert_close(ours[None], img2img.theirs(tiny_model, "euler", 0.6, [SEED]))

        files = {
            "init_image": ("init.png", init, "image/png"),
            "mask_image": ("mask.png", encode_png(inpaint.mask_image()), "image/png"),
        }
        form = {key: str(value) for key, value in {**common, "sampler": "ddim"}.items()}
        form["keep_unmasked"] = "false"  # diffusers decodes everywhere; the API's default pastes
        reply = client.post("/v1/inpaint", data=form, files=files)
        assert reply.status_code == 202, reply.text
        request = reply.json()["request"]
        assert (request["task"], request["width"], request["strength"]) == ("inpaint", 32, 1.0)
        ours = served_image(client, reply.json()["id"])
        assert_close(ours[None], inpaint.theirs(tiny_model, "ddim", 1.0, [SEED]))


def test_cli_client_inpaint_matches_diffusers(
    stack: ApiServer, tiny_model: Path, tmp_path: Path
) -> None:
    """`ldm-serve client inpaint` (files read, sent as base64 JSON) gives diffusers' image."""
    from tests import test_model_img2img as img2img
    from tests import test_model_inpaint as inpaint
    from tests.api_harness import KEY_A

    init, mask, out = tmp_path / "init.png", tmp_path / "mask.png", tmp_path / "out.png"
    img2img.init_image().save(init)
    inpaint.mask_image().save(mask)
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "client", "inpaint", PROMPT, "--url", stack.url,
         "--api-key", KEY_A, "--init-image", str(init), "--mask", str(mask), "--seed", str(SEED),
         "--steps", str(img2img.STEPS), "--guidance-scale", str(GUIDANCE), "--sampler", "ddim",
         "--no-keep-unmasked", "-o", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    ours = np.asarray(Image.open(out).convert("RGB"))
    assert_close(ours[None], inpaint.theirs(tiny_model, "ddim", 1.0, [SEED]))
