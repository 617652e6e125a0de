"""Classifier-free guidance (Ho & Salimans 2022) over a heterogeneous batch, one scale per sample.

The guider sees denoised estimates, not network outputs (sgm's split): D = D_u + s (D_c - D_u),
which equals guiding eps or v because D is affine in the network output with per-sample
coefficients. A sample with guidance_scale <= 1 is conditional only: it gets no unconditional row,
and its result is its conditional estimate bit for bit, whatever else shares the batch.
"""

from __future__ import annotations

from typing import Any

import torch

from model.sampling.denoiser import Denoiser


def needs_uncond(guidance_scale: torch.Tensor) -> torch.Tensor:
    """Which samples (B,) bool need the unconditional row."""
    return guidance_scale > 1


def cfg_rows(
    x: torch.Tensor,
    sigma: torch.Tensor,
    t: torch.Tensor,
    context: torch.Tensor,
    uncond_context: torch.Tensor,
    guidance_scale: torch.Tensor,
    concat: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ...]:
    """Rows of one batched call: all B conditional rows, then the U unconditional rows of the
    samples that need them; uncond_context holds just those U rows, in sample order. Per-row
    extras (`concat` (B, C', h, w), `labels` (B,)) are repeated for the unconditional rows."""
    mask = needs_uncond(guidance_scale).to(x.device)  # (B,) bool
    if int(mask.sum()) != len(uncond_context):
        raise ValueError(f"{int(mask.sum())} guided samples but {len(uncond_context)} uncond rows")
    return (
        torch.cat([x, x[mask]]),  # (B + U, C, h, w)
        torch.cat([sigma, sigma[mask.to(sigma.device)]]),  # (B + U,)
        torch.cat([t, t[mask.to(t.device)]]),  # (B + U,)
        torch.cat([context, uncond_context]),  # (B + U, L, D)
        None if concat is None else torch.cat([concat, concat[mask]]),  # (B + U, C', h, w)
        None if labels is None else torch.cat([labels, labels[mask.to(labels.device)]]),  # (B+U,)
    )


def cfg_combine(denoised: torch.Tensor, guidance_scale: torch.Tensor) -> torch.Tensor:
    """Guided estimates (B, ...) from the denoised rows (B + U, ...) of `cfg_rows`."""
    mask = needs_uncond(guidance_scale).to(denoised.device)  # (B,) bool
    cond = denoised[: len(mask)]  # (B, C, h, w)
    uncond = denoised[len(mask) :]  # (U, C, h, w)
    scale = guidance_scale.to(cond.device, cond.dtype)[mask].view(-1, 1, 1, 1)  # (U, 1, 1, 1)
    guided = cond.clone()
    guided[mask] = uncond + scale * (cond[mask] - uncond)
    return guided


def guided_denoise(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigma: torch.Tensor,
    t: torch.Tensor,
    context: Any,
    uncond_context: Any,
    guidance_scale: torch.Tensor,
    concat: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """One denoiser call for B samples with per-sample CFG: (B, C, h, w) guided estimates."""
    rows = cfg_rows(x, sigma, t, context, uncond_context, guidance_scale, concat, labels)
    return cfg_combine(denoiser(*rows), guidance_scale)
