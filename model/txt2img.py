"""Text-to-image as one call: every prompt a sample in one engine, stepped to the end, decoded."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
    negatives = list(negative_prompts or [""] * len(prompts))
    seeds = list(seeds if seeds is not None else range(len(prompts)))
    if not len(prompts) == len(negatives) == len(seeds):
        raise ValueError("prompts, negative_prompts and seeds must have the same length")
    samples = [
        engine.add(
            SampleSpec(prompt, negative, seed, width, height, steps, guidance_scale, sampler,
                       eta, karras),
            tag=i,
        )
        for i, (prompt, negative, seed) in enumerate(zip(prompts, negatives, seeds, strict=True))
    ]  # fmt: skip
    while any(not sample.done for sample in samples):
        engine.step()
        step = min(sample.steps_done for sample in samples)
        if callback is not None and callback(step, steps) is False:
            for sample in samples:
                engine.remove(sample)
            raise Canceled(f"canceled at step {step}/{steps}")
    return engine.decode(samples)
