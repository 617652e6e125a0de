"""The paper's super-resolution model (LDM-SR, Sec. 4.4: the low-res image concatenated to the
latent, a VQ-f4 autoencoder) against diffusers' LDMSuperResolutionPipeline on a tiny random model in
its folder layout (`unet/` UNet2DModel, in_channels 3 + 3; `vqvae/` VQModel; `scheduler/`): same
weights, image and seeds give the same 4x images through the upscale task; an image is the same
alone or batched."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.engine import BatchEngine, SampleSpec
from model.pipeline import load_pipeline
from model.txt2img import run
from testkit.tiny_paper_models import build_tiny_ldm_superres
from tests.api_harness import ApiServer, encode_png, serve
from tests.conftest import RedisServer
from tests.test_model_parity import assert_close, scheduler_for
from tests.test_parity_processes import served_image
from tests.worker_harness import WorkerProcess

# Multiples of 32: diffusers' preprocessing resizes (Lanczos) to them, a no-op at these sizes.
LOW_W, LOW_H, STEPS = 64, 32, 8
DB = 7


@pytest.fixture(scope="module")
def superres(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ldm_superres(tmp_path_factory.mktemp("ldm") / "ldm-sr")


def low_res(width: int = LOW_W, height: int = LOW_H) -> Image.Image:
    """A colour gradient with a square: structure the model has to carry."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 90)], axis=-1)
    array[height // 4 : 3 * height // 4, width // 5 : width // 2] = (250, 30, 30)
    return Image.fromarray(array.astype(np.uint8))


@cache
def reference(path: Path):  # noqa: ANN201 - diffusers is imported lazily (test-only)
    from diffusers import LDMSuperResolutionPipeline

    pipe = LDMSuperResolutionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(path: Path, sampler: str, seeds: list[int], latent_only: bool = False) -> np.ndarray:
    """One diffusers call per seed. The pipeline applies `scale_model_input` to the latent and the
    image concatenated, so for the Euler schedulers (which scale) it scales the image too, unlike
    the model's training (CompVis concatenates it unscaled); `latent_only` scales the latent alone.
    It passes no generator to `scheduler.step`: samplers that draw noise there are not comparable.
    """
    pipe = reference(path)
    pipe.scheduler = scheduler = scheduler_for(sampler, pipe.scheduler.config)
    if latent_only:
        scale = scheduler.scale_model_input
        scheduler.scale_model_input = lambda x, t: torch.cat([scale(x[:, :3], t), x[:, 3:]], 1)
    images = [
        pipe(low_res(), num_inference_steps=STEPS, generator=torch.Generator("cpu").manual_seed(s),
             output_type="np").images[0]
        for s in seeds
    ]  # fmt: skip
    return (np.stack(images) * 255).round().astype(np.uint8)


def spec(sampler: str, seed: int, image: Image.Image | None = None, **fields: object) -> SampleSpec:
    image = image or low_res()
    fields = {"prompt": "", "steps": STEPS, **fields}
    return SampleSpec(seed=seed, width=4 * image.width, height=4 * image.height, sampler=sampler,
                      low_res_image=image, **fields)  # type: ignore[arg-type]  # fmt: skip


def ours(engine: BatchEngine, specs: list[SampleSpec]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in run(engine, specs)])


@pytest.mark.parametrize("sampler", ["ddim", pytest.param("dpmpp_2m", marks=pytest.mark.slow)])
def test_super_resolution_matches_diffusers(superres: Path, sampler: str) -> None:
    images = ours(BatchEngine(load_pipeline(superres)), [spec(sampler, seed) for seed in (5, 6)])
    assert images.shape == (2, 4 * LOW_H, 4 * LOW_W, 3)  # f x the input
    assert_close(images, theirs(superres, sampler, [5, 6]))


@pytest.mark.slow
def test_euler_matches_diffusers_scaling_the_latent_alone(superres: Path) -> None:
    """Euler scales its model input; the low-res image joins it unscaled, as in training."""
    images = ours(BatchEngine(load_pipeline(superres)), [spec("euler", 5)])
    assert_close(images, theirs(superres, "euler", [5], latent_only=True))
    error = np.abs(images.astype(int) - theirs(superres, "euler", [5]).astype(int))
    assert error.mean() > 1  # diffusers' pipeline as it is scales the image too


def test_an_upscaled_image_is_the_same_alone_or_batched(superres: Path) -> None:
    """Bit-exact on CPU; prompts, guidance and noise levels change nothing (LDM-SR reads none)."""
    engine = BatchEngine(load_pipeline(superres))
    alone = ours(engine, [spec("euler", 7)])
    batch = [spec("ddim", 1), spec("euler", 7, prompt="a cat", guidance_scale=7.5, noise_level=90)]
    batch += [spec("dpmpp_2m", 2), spec("ddim", 3, image=low_res(32, 32))]  # another shape
    assert np.array_equal(np.asarray(run(engine, batch)[1]), alone[0])


def test_super_resolution_runs_as_the_upscale_task(superres: Path) -> None:
    pipe = load_pipeline(superres)
    assert pipe.tasks == ("upscale",)
    assert pipe.upscaler is None  # no noise augmentation, no class label
    assert pipe.latent_scale == 1.0  # decoded unscaled, whatever the VQModel config says
    engine = BatchEngine(pipe)
    with pytest.raises(ValueError, match="needs a low-resolution image"):
        engine.add(SampleSpec("", width=64, height=64))
    with pytest.raises(ValueError, match="4x smaller"):
        engine.add(SampleSpec("", width=4 * LOW_W, height=2 * LOW_H, low_res_image=low_res()))


@pytest.fixture(scope="module")
def stack(
    redis_server: RedisServer, superres: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    url = redis_server.fresh_db(DB)
    env = {"LDM_MODEL_NAME": "ldm-sr"}
    worker = WorkerProcess(url, superres, tmp_path_factory.mktemp("ldm-sr-worker"), env).start()
    try:
        yield from serve(url, {"LDM_MODEL_NAME": "ldm-sr", "LDM_MAX_PIXELS": "32768"})
    finally:
        worker.stop()


@pytest.mark.slow
def test_http_upscale_matches_diffusers(stack: ApiServer, superres: Path) -> None:
    """POST /v1/upscale with no prompt: the worker's model says it upscales, the image is 4x."""
    image = "data:image/png;base64," + base64.b64encode(encode_png(low_res())).decode()
    with stack.client() as client:
        reply = client.post("/v1/upscale", json={"image": image, "seed": 5, "steps": STEPS,
                                                 "sampler": "ddim"})  # fmt: skip
        assert reply.status_code == 202, reply.text
        assert_close(served_image(client, reply.json()["id"])[None], theirs(superres, "ddim", [5]))
        models = client.get("/v1/models").json()["data"]
    assert [(m["name"], m["tasks"]) for m in models] == [("ldm-sr", ["upscale"])]
