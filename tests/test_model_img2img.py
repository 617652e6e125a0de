"""Image-to-image (SDEdit) against diffusers' StableDiffusionImg2ImgPipeline: same weights, init
image, strength and seeds give the same images, including diffusers' order of random draws
(VAE posterior sample, then the noise, then the sampler's own)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.engine import BatchEngine, SampleSpec
from model.pipeline import load_pipeline
from model.txt2img import img2img
from testkit.tiny_models import build_tiny_sd
from tests.test_model_parity import GUIDANCE, PROMPT, assert_close, scheduler_for

SIZE, STEPS = 32, 10


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("img2img") / "sd")


def init_image() -> Image.Image:
    """A structured RGB image: gradients and a square, so the encoder sees real content."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    array = np.stack([x * 8, y * 8, (x + y) * 4], axis=-1).clip(0, 255).astype(np.uint8)
    array[8:20, 10:22] = (250, 30, 40)
    return Image.fromarray(array)


@cache
def reference(path: Path):  # noqa: ANN201 - diffusers is imported lazily (test-only)
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(path: Path, sampler: str, strength: float, seeds: list[int]) -> np.ndarray:
    pipe = reference(path)
    pipe.scheduler = scheduler_for(sampler, pipe.scheduler.config)
    out = pipe(
        [PROMPT] * len(seeds),
        image=init_image(),
        strength=strength,
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        output_type="np",
    ).images
    return (out * 255).round().astype(np.uint8)


def ours(path: Path, sampler: str, strength: float, seeds: list[int]) -> np.ndarray:
    engine = BatchEngine(load_pipeline(path))
    images = img2img(engine, init_image(), [PROMPT] * len(seeds), strength, seeds=seeds,
                     steps=STEPS, guidance_scale=GUIDANCE, sampler=sampler)  # fmt: skip
    return np.stack([np.asarray(image) for image in images])


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_img2img_matches_diffusers(tiny_model: Path, sampler: str, strength: float) -> None:
    seeds = [11, 12]
    expected = theirs(tiny_model, sampler, strength, seeds)
    assert_close(ours(tiny_model, sampler, strength, seeds), expected)


def test_the_comparison_would_see_a_different_strength_or_seed(tiny_model: Path) -> None:
    expected = theirs(tiny_model, "euler", 0.5, [11])
    with pytest.raises(AssertionError):
        assert_close(ours(tiny_model, "euler", 0.6, [11]), expected)
    with pytest.raises(AssertionError):
        assert_close(ours(tiny_model, "euler", 0.5, [12]), expected)


def test_strength_runs_that_share_of_the_steps_and_keeps_the_image_at_low_strength(
    tiny_model: Path,
) -> None:
    engine = BatchEngine(load_pipeline(tiny_model))
    spec = SampleSpec(PROMPT, width=SIZE, height=SIZE, steps=STEPS, init_image=init_image(),
                      strength=0.3)  # fmt: skip
    assert spec.first_step() == 7 and engine.add(spec).total_steps == 3
    low = ours(tiny_model, "ddim", 0.1, [3])[0].astype(int)
    high = ours(tiny_model, "ddim", 1.0, [3])[0].astype(int)
    source = np.asarray(init_image()).astype(int)
    assert np.abs(low - source).mean() < np.abs(high - source).mean()
    with pytest.raises(ValueError, match="runs no step"):
        SampleSpec(PROMPT, steps=4, init_image=init_image(), strength=0.1).first_step()
    with pytest.raises(ValueError, match="expected"):
        engine.add(SampleSpec(PROMPT, width=64, height=64, init_image=init_image()))


def test_img2img_and_txt2img_samples_share_steps_and_match_alone(tiny_model: Path) -> None:
    """An img2img sample joins part-way through its schedule; images stay bit-identical."""
    pipe = load_pipeline(tiny_model)
    specs = [
        SampleSpec(PROMPT, seed=1, width=SIZE, height=SIZE, steps=8),
        SampleSpec(
            PROMPT,
            seed=2,
            width=SIZE,
            height=SIZE,
            steps=8,
            init_image=init_image(),
            strength=0.5,
            sampler="euler",
        ),  # fmt: skip
        SampleSpec(
            "another",
            seed=3,
            width=SIZE,
            height=SIZE,
            steps=6,
            init_image=init_image(),
            strength=0.9,
            guidance_scale=1.0,
        ),  # fmt: skip
    ]

    def images(batch: list[SampleSpec]) -> list[np.ndarray]:
        engine = BatchEngine(pipe)
        samples = [engine.add(spec) for spec in batch]
        shared = 0
        while len(engine):
            shared = max(shared, max(len(group) for group in engine.groups().values()))
            engine.step()
        assert len(batch) == 1 or shared == len(batch), "the samples did not share a forward"
        return [np.asarray(image) for image in engine.decode(samples)]

    together = images(specs)
    for spec, image in zip(specs, together, strict=True):
        assert np.array_equal(images([spec])[0], image)
