"""Classifier-free guidance (Ho & Salimans 2022) on raw network outputs, one scale per sample.

A sample with guidance_scale <= 1 is conditional only: it needs no unconditional row, and its output
is the conditional output itself (bit for bit, whatever else shares the batch).
"""

from __future__ import annotations

from typing import Any

import torch

from model.sampling.denoiser import Network


def needs_uncond(guidance_scale: float | torch.Tensor) -> bool | torch.Tensor:
    """Whether a sample (or each sample of a (B,) tensor) needs the unconditional row."""
    return guidance_scale > 1


def apply_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, guidance_scale: torch.Tensor
) -> torch.Tensor:
    """uncond + scale * (cond - uncond) per sample (B,); rows with scale <= 1 return cond as is."""
    scale = guidance_scale.to(device=cond.device, dtype=cond.dtype)
    scale = scale.reshape(-1, *([1] * (cond.ndim - 1)))  # (B, 1, 1, 1)
    guided = uncond + scale * (cond - uncond)
    return torch.where(needs_uncond(scale), guided, cond)


def guided_batch(
    x_in: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    guidance_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Network inputs [all B conditional rows; unconditional rows of samples that need them]."""
    mask = needs_uncond(guidance_scale).to(x_in.device)  # (B,) bool
    return (
        torch.cat([x_in, x_in[mask]]),  # (B + U, C, h, w)
        torch.cat([t, t[mask]]),  # (B + U,)
        torch.cat([context, uncond_context[mask]]),  # (B + U, L, D)
    )


def combine_guided(output: torch.Tensor, guidance_scale: torch.Tensor) -> torch.Tensor:
    """Guided outputs (B, ...) from the network output of a `guided_batch` (B + U, ...)."""
    mask = needs_uncond(guidance_scale).to(output.device)  # (B,) bool
    cond = output[: len(mask)]
    uncond = cond.clone()
    uncond[mask] = output[len(mask) :]
    return apply_guidance(cond, uncond, guidance_scale)


class GuidedNetwork:
    """A `Network` that applies classifier-free guidance in one batched call (simple path)."""

    def __init__(self, net: Network, uncond_context: Any, guidance_scale: torch.Tensor) -> None:
        self.net = net
        self.uncond_context = uncond_context
        self.guidance_scale = guidance_scale  # (B,)

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, context: Any) -> torch.Tensor:
        batch = guided_batch(x_in, t, context, self.uncond_context, self.guidance_scale)
        return combine_guided(self.net(*batch), self.guidance_scale)
