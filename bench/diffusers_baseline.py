"""The diffusers side of bench.model: the same weights and workloads through diffusers'
StableDiffusionPipeline with a DDIM scheduler.

diffusers is a test/bench-only oracle; this file is not imported by the service or the workers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.model_workloads import GUIDANCE, PROMPT, SEED, STEPS


def load_diffusers(path: Path):
    """The diffusers pipeline of a diffusers folder, DDIM, eval mode, no progress bar."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    theirs = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    for module in (theirs.unet, theirs.vae, theirs.text_encoder):
        module.eval().requires_grad_(False)
    return theirs


def theirs_unet(pipe, x, t, context) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.unet(x, t, encoder_hidden_states=context).sample


def theirs_txt2img(pipe, n: int, size: int, steps: int = STEPS) -> np.ndarray:
    out = pipe(
        [PROMPT] * n,
        generator=[torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)],
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        height=size,
        width=size,
        eta=0.0,
        output_type="np",
    ).images
    return (out * 255).round().astype(np.uint8)
