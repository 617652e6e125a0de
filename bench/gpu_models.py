"""Random-weight SD 1.5-size diffusers folders for bench.gpu, initialised on the target device.

Random init of ~1.1 B parameters takes minutes on a CPU and well under a second on a GPU, so the
networks are built under `torch.device(device)` and saved as plain (variant-free) fp16 safetensors,
which both our loader and diffusers read. diffusers is a bench-only oracle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,  # diffusers' name for the number of heads in SD 1.x
    norm_num_groups=32,
)
SD15_VAE = dict(
    sample_size=512,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    layers_per_block=2,
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32,
)
CLIP_L_TEXT = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    projection_dim=768,
    hidden_act="quick_gelu",
    vocab_size=49408,  # CLIP's BPE vocabulary; our small tokenizer uses the first ids only
)


@dataclass(frozen=True)
class ModelSpec:
    """Network configs of one random SD model and the latent side its benchmark runs at."""

    name: str
    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    text: dict = field(default_factory=dict)
    latent: int = 64

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def image_size(self) -> int:
        return self.latent * self.downsampling


SD15 = ModelSpec("SD 1.5 size", SD15_UNET, SD15_VAE, CLIP_L_TEXT, latent=64)
SMOKE = ModelSpec(  # the SD 1.5 layout at tiny widths, so --smoke runs every code path on a CPU
    "SD 1.5 layout, tiny widths",
    {**SD15_UNET, "block_out_channels": (32, 32, 64, 64), "cross_attention_dim": 32},
    {
        **SD15_VAE,
        "block_out_channels": (16, 32, 32, 32),
        "layers_per_block": 1,
        "norm_num_groups": 8,
    },
    dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=32,
    ),
    latent=32,
)


def build_random_sd(
    path: Path,
    spec: ModelSpec,
    device: torch.device | str,
    dtype: torch.dtype = torch.float16,
    seed: int = 0,
) -> Path:
    """Write a random SD pipeline (DDIM, SD 1.5 schedule) as a diffusers folder in `dtype`."""
    from testkit.tiny_models import build_tiny_sd

    return build_tiny_sd(
        path, seed=seed, unet=spec.unet, vae=spec.vae, text=spec.text, device=device, dtype=dtype
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_both(path: Path, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any, list[float]]:
    """Our pipeline and diffusers' from one folder, in `dtype` on `device`, and each load's
    seconds."""
    from bench.diffusers_baseline import load_diffusers
    from model.pipeline import load_pipeline

    loads = (
        lambda: load_pipeline(path, device, dtype),
        lambda: load_diffusers(path).to(device=device, dtype=dtype, silence_dtype_warnings=True),
    )
    pipes, seconds = [], []
    for load in loads:
        started = time.perf_counter()
        pipes.append(load())
        sync(device)
        seconds.append(time.perf_counter() - started)
    return pipes[0], pipes[1], seconds
