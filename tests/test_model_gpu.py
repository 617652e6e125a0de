"""CUDA half precision: fp16/bf16 images stay close to fp32 and the VAE never returns NaN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model.engine import BatchEngine
from model.pipeline import load_pipeline
from model.txt2img import txt2img
from testkit.tiny_models import build_tiny_sd

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("gpu") / "sd")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_fp32(tiny: Path, dtype: torch.dtype) -> None:
    args = (["a cat"] * 2, ["a dog"] * 2, [1, 2], 64, 64, 10, 7.5, "dpmpp_2m")
    reference = txt2img(BatchEngine(load_pipeline(tiny, "cuda", torch.float32)), *args)
    half = txt2img(BatchEngine(load_pipeline(tiny, "cuda", dtype)), *args)
    for a, b in zip(reference, half, strict=True):
        diff = np.abs(np.asarray(a).astype(int) - np.asarray(b).astype(int))
        assert diff.mean() < 3.0, diff.mean()


def test_fp16_keeps_the_vae_in_fp32(tiny: Path) -> None:
    pipe = load_pipeline(tiny, "cuda", torch.float16)
    assert next(pipe.components.vae.parameters()).dtype == torch.float32
    assert next(pipe.components.unet.parameters()).dtype == torch.float16
    latents = torch.full((1, 4, 16, 16), 30.0, device="cuda")  # large enough to overflow fp16
    assert np.isfinite(pipe.decode_latents(latents).astype(float)).all()
