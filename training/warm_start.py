"""Start stage 2 from a trained checkpoint whose UNet lacks some blocks (attention at 16x16)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from model.attention import SpatialTransformer


@torch.no_grad()
def warm_start(unet: nn.Module, text_encoder: nn.Module, checkpoint: Path) -> list[str]:
    """Load the checkpoint's EMA weights; blocks it lacks start as the identity (zero proj_out,
    as ControlNet and LoRA do), so the network computes exactly what the checkpoint did.
    Returns the names of the new blocks; any other mismatch is an error."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    text_encoder.load_state_dict(payload["ema_text"]["shadow"])
    result = unet.load_state_dict(payload["ema_unet"]["shadow"], strict=False)
    if result.unexpected_keys:
        extra = sorted({key.rsplit(".", 1)[0] for key in result.unexpected_keys})
        raise ValueError(f"{checkpoint}: has weights this UNet lacks: {extra[:4]}...")
    missing = set(result.missing_keys)
    new = [
        name
        for name, module in unet.named_modules()
        if isinstance(module, SpatialTransformer)
        and any(key.startswith(name + ".") for key in missing)
    ]
    covered = {key for key in missing if any(key.startswith(name + ".") for name in new)}
    if missing - covered:
        raise ValueError(f"{checkpoint}: lacks weights for {sorted(missing - covered)[:4]}...")
    for name in new:
        out = unet.get_submodule(name).proj_out
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
    return new
