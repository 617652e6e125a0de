"""Super-resolution x4 against diffusers' StableDiffusionUpscalePipeline: the SD x4 upscaler layout
(UNet in_channels 7 = latent + noise-augmented low-res RGB, the noise level as a class embedding,
cross-attention-only transformer levels, an f=4 VAE, v-prediction) on a tiny random model. Same
weights, image, noise level and seeds give the same images, diffusers' order of random draws
(augmentation noise, then the latent) included; an image is the same alone or batched."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint.configs import infer_unet_config
from model.checkpoint.files import read_state_dict
from model.engine import BatchEngine, SampleSpec
from model.pipeline import load_pipeline
from testkit.tiny_models import build_tiny_upscaler
from tests.conftest import REPO
from tests.test_model_parity import assert_close, scheduler_for

LOW_W, LOW_H, STEPS, GUIDANCE, PROMPT = 24, 16, 8, 5.0, "a red cat"


@pytest.fixture(scope="module")
def upscaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_upscaler(tmp_path_factory.mktemp("upscaler") / "x4")


def low_res() -> Image.Image:
    """A smooth colour gradient with a square: structure the upscaler has to carry."""
    y, x = np.mgrid[0:LOW_H, 0:LOW_W]
    array = np.stack([x * 255 // LOW_W, y * 255 // LOW_H, np.full_like(x, 90)], axis=-1)
    array[4:12, 6:14] = (250, 30, 30)
    return Image.fromarray(array.astype(np.uint8))


@cache
def reference(path: Path):  # noqa: ANN201 - diffusers is imported lazily (test-only)
    from diffusers import StableDiffusionUpscalePipeline

    pipe = StableDiffusionUpscalePipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(path: Path, sampler: str, seeds: list[int], noise_level: int = 20) -> np.ndarray:
    pipe = reference(path)
    pipe.scheduler = scheduler_for(sampler, pipe.scheduler.config)
    images = [
        pipe(
            PROMPT, image=low_res(), num_inference_steps=STEPS, guidance_scale=GUIDANCE,
            noise_level=noise_level, generator=torch.Generator("cpu").manual_seed(seed),
            output_type="np",
        ).images[0]
        for seed in seeds
    ]  # fmt: skip
    return (np.stack(images) * 255).round().astype(np.uint8)


def spec(sampler: str, seed: int, noise_level: int = 20, guidance: float = GUIDANCE) -> SampleSpec:
    return SampleSpec(
        PROMPT, seed=seed, width=4 * LOW_W, height=4 * LOW_H, steps=STEPS, sampler=sampler,
        guidance_scale=guidance, low_res_image=low_res(), noise_level=noise_level,
    )  # fmt: skip


def run(engine: BatchEngine, specs: list[SampleSpec]) -> np.ndarray:
    samples = [engine.add(s) for s in specs]
    while len(engine):
        engine.step()
    return np.stack([np.asarray(image) for image in engine.decode(samples)])


SLOW = pytest.mark.slow  # the fast tier keeps one sampler


@pytest.mark.parametrize(
    "sampler",
    ["ddim", *(pytest.param(s, marks=SLOW) for s in ("euler", "euler_a", "dpmpp_2m"))],
)
def test_upscaling_matches_diffusers(upscaler: Path, sampler: str) -> None:
    seeds = [5, 6]
    ours = run(BatchEngine(load_pipeline(upscaler)), [spec(sampler, seed) for seed in seeds])
    assert ours.shape == (2, 4 * LOW_H, 4 * LOW_W, 3)
    assert_close(ours, theirs(upscaler, sampler, seeds))


@SLOW
def test_the_noise_level_conditions_the_model_as_diffusers(upscaler: Path) -> None:
    """A higher level changes the image (the class label and the augmentation both matter)."""
    engine = BatchEngine(load_pipeline(upscaler))
    high = run(engine, [spec("ddim", 5, noise_level=300)])
    assert_close(high, theirs(upscaler, "ddim", [5], noise_level=300))
    assert np.abs(high.astype(int) - run(engine, [spec("ddim", 5)]).astype(int)).mean() > 1


def test_an_upscaled_image_is_the_same_alone_or_batched(upscaler: Path) -> None:
    """Bit-exact on CPU, with different seeds, noise levels and guidance sharing the forwards."""
    engine = BatchEngine(load_pipeline(upscaler))
    alone = run(engine, [spec("euler", 7)])
    batch = [spec("euler", 8, noise_level=100), spec("euler", 7), spec("ddim", 9)]
    batch.append(spec("euler", 10, guidance=1.0))  # conditional only: no unconditional row
    assert np.array_equal(run(engine, batch)[1], alone[0])


def test_upscaler_requests_are_checked(upscaler: Path) -> None:
    engine = BatchEngine(load_pipeline(upscaler))
    with pytest.raises(ValueError, match="noise_level 351 is outside"):
        engine.add(spec("ddim", 1, noise_level=351))
    with pytest.raises(ValueError, match="4x smaller"):
        engine.add(SampleSpec(PROMPT, width=4 * LOW_W, height=2 * LOW_H, low_res_image=low_res()))
    with pytest.raises(ValueError, match="needs a low-resolution image"):
        engine.add(SampleSpec(PROMPT, width=64, height=64))
    assert load_pipeline(upscaler).tasks == ("upscale",)


@SLOW
def test_an_upscaler_converts_to_a_single_file_and_back(upscaler: Path, tmp_path: Path) -> None:
    """`ldm-serve convert` both ways: the single file (CompVis keys: label_emb, attn1 reading the
    context) gives the same images, and the folder written back is one diffusers loads."""
    single = tmp_path / "x4.safetensors"
    folder = tmp_path / "x4-again"
    for source, destination in ((upscaler, single), (single, folder)):
        result = subprocess.run(
            [sys.executable, "-m", "cli.main", "convert", str(source), str(destination),
             "--dtype", "float32"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    unet = {k.removeprefix("model.diffusion_model."): v for k, v in read_state_dict(single).items()}
    inferred = infer_unet_config(unet)  # the structure read off the CompVis keys alone
    assert (inferred.in_channels, inferred.num_classes) == (7, 1000)
    assert inferred.attention_levels == (False, True, True)
    assert inferred.cross_attention_only == (False, True, False)  # level 0 has no attention
    original = run(BatchEngine(load_pipeline(upscaler)), [spec("ddim", 5)])
    assert np.array_equal(run(BatchEngine(load_pipeline(single)), [spec("ddim", 5)]), original)
    assert_close(original, theirs(folder, "ddim", [5]))


def test_large_upscaled_outputs_decode_in_tiles(upscaler: Path) -> None:
    """Past `tile_latents` the f=4 VAE decodes overlapping tiles (bounded memory); the result
    stays close to the whole-image decode (the mid-block attention is the only global part)."""
    pipe = load_pipeline(upscaler)
    whole = run(BatchEngine(pipe), [spec("ddim", 5)]).astype(int)
    pipe.tile_latents = 16  # the 24x16 latent now takes two 16x16 tiles, overlapping by 8
    tiled = run(BatchEngine(pipe), [spec("ddim", 5)]).astype(int)
    assert tiled.shape == whole.shape
    error = np.abs(tiled - whole)
    assert 0 < error.mean() <= 2.0, error.mean()  # tiled for real, and close
