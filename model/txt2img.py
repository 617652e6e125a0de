"""Text-to-image and image-to-image as one call: every image a sample in one engine, stepped to
the end, decoded. The worker drives the engine itself; the CLI, tests and benchmarks use these."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from model.engine import BatchEngine, SampleSpec
from model.errors import Canceled
from model.sampling.registry import DEFAULT_SAMPLER

ProgressCallback = Callable[[int, int], bool | None]  # (step, total) -> False cancels


def txt2img(
    engine: BatchEngine,
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    width: int = 512,
    height: int = 512,
    steps: int = 25,
    guidance_scale: float = 7.5,
    sampler: str = DEFAULT_SAMPLER,
    eta: float | None = None,
    karras: bool = False,
    callback: ProgressCallback | None = None,
) -> list[Image.Image]:
    """One image per prompt; image i uses Generator('cpu').manual_seed(seeds[i]).

    `callback(step, total)` runs after every denoiser call with grid steps completed (a Heun
    step spans two calls); returning False raises Canceled.
    """
    specs = specs_for(
        prompts, negative_prompts, seeds, width=width, height=height, steps=steps,
        guidance_scale=guidance_scale, sampler=sampler, eta=eta, karras=karras,
    )  # fmt: skip
    return run(engine, specs, callback)


def img2img(
    engine: BatchEngine,
    init_image: Image.Image,
    prompts: Sequence[str],
    strength: float = 0.75,
    negative_prompts: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    steps: int = 25,
    guidance_scale: float = 7.5,
    sampler: str = DEFAULT_SAMPLER,
    eta: float | None = None,
    karras: bool = False,
    callback: ProgressCallback | None = None,
) -> list[Image.Image]:
    """SDEdit (Meng et al. 2022): each image starts from `init_image` (its size) noised to the
    step `strength` selects and runs steps x strength steps; otherwise as `txt2img`."""
    specs = specs_for(
        prompts, negative_prompts, seeds, width=init_image.width, height=init_image.height,
        steps=steps, guidance_scale=guidance_scale, sampler=sampler, eta=eta, karras=karras,
        init_image=init_image, strength=strength,
    )  # fmt: skip
    return run(engine, specs, callback)


def specs_for(
    prompts: Sequence[str],
    negative_prompts: Sequence[str] | None,
    seeds: Sequence[int] | None,
    **fields: Any,
) -> list[SampleSpec]:
    """One spec per prompt, image i seeded with seeds[i] (default: i)."""
    negatives = list(negative_prompts or [""] * len(prompts))
    seeds = list(seeds if seeds is not None else range(len(prompts)))
    if not len(prompts) == len(negatives) == len(seeds):
        raise ValueError("prompts, negative_prompts and seeds must have the same length")
    return [
        SampleSpec(prompt=prompt, negative_prompt=negative, seed=seed, **fields)
        for prompt, negative, seed in zip(prompts, negatives, seeds, strict=True)
    ]


def run(
    engine: BatchEngine, specs: Sequence[SampleSpec], callback: ProgressCallback | None = None
) -> list[Image.Image]:
    """Add the specs, step the engine until they finish, decode them in order."""
    samples = [engine.add(spec, tag=i) for i, spec in enumerate(specs)]
    total = max(sample.total_steps for sample in samples)
    while any(not sample.done for sample in samples):
        engine.step()
        step = min(sample.steps_done for sample in samples)
        if callback is not None and callback(step, total) is False:
            for sample in samples:
                engine.remove(sample)
            raise Canceled(f"canceled at step {step}/{total}")
    return engine.decode(samples)
