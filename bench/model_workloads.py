"""bench.model's workloads on our pipeline, and the request every row uses.

bench/diffusers_baseline.py runs the same workloads through diffusers.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.random_models import CONTEXT_DIM
from model.engine import BatchEngine
from model.txt2img import txt2img

PROMPT = "a red cube on a blue floor, studio light"
NEGATIVE = ""
STEPS = 25
GUIDANCE = 7.5
SEED = 1234


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unet_inputs(batch: int, latent: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(batch, 4, latent, latent, generator=g)
    t = torch.full((batch,), 500, dtype=torch.long)
    context = torch.randn(batch, 77, CONTEXT_DIM, generator=g)
    return x, t, context


def ours_unet(pipe, x, t, context) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.components.unet(x, t, context)


def ours_txt2img(pipe, n: int, size: int, steps: int = STEPS) -> np.ndarray:
    images = txt2img(
        BatchEngine(pipe),
        [PROMPT] * n,
        [NEGATIVE] * n,
        [SEED + i for i in range(n)],
        size,
        size,
        steps,
        GUIDANCE,
    )
    return np.stack([np.asarray(image) for image in images])


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())
