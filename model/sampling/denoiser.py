"""Denoiser scaling: turn an eps- or v-predicting network into D(x; sigma) in VE space.

Karras et al. (2022), Eq. 7: D(x; sigma) = c_skip x + c_out F(c_in x; t(sigma)). For a VP-trained
network c_in = 1 / sqrt(sigma^2 + 1) (its input is the VP latent); eps-prediction has c_skip = 1,
c_out = -sigma; v-prediction (Salimans & Ho 2022) has c_skip = 1 / (sigma^2 + 1),
c_out = -sigma / sqrt(sigma^2 + 1).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from model.sampling.schedule import PREDICTION_TYPES


class Network(Protocol):
    """An eps/v-predicting network: ``net(x_in, t, context[, labels]) -> output`` shaped like
    x_in; class-conditional networks also take integer labels (B,)."""

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, context: Any, /) -> torch.Tensor: ...


def per_sample(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """Sigma as a (B, 1, 1, 1) (or 0-d) tensor on x's device and dtype, broadcastable against x."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))  # (B, 1, 1, 1)


def model_input_scale(sigma: torch.Tensor) -> torch.Tensor:
    """c_in = 1 / sqrt(sigma^2 + 1): scales the VE latent to the VP network input."""
    return 1 / (sigma**2 + 1) ** 0.5


def denoised_from_output(
    x: torch.Tensor, sigma: torch.Tensor | float, output: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """D(x; sigma) from the network output; sigma is a scalar or one per sample (B,)."""
    sigma = per_sample(sigma, x)
    if prediction_type == "epsilon":
        return x - sigma * output
    if prediction_type == "v_prediction":
        c_skip = 1 / (sigma**2 + 1)
        c_out = -sigma / (sigma**2 + 1) ** 0.5
        return c_skip * x + c_out * output
    raise ValueError(f"prediction_type={prediction_type!r}; expected one of {PREDICTION_TYPES}")


class Denoiser:
    """D(x; sigma) = c_skip x + c_out F(c_in x; t) of an eps/v network (Karras et al. 2022, Eq. 7).

    One call serves a heterogeneous batch: every row has its own sigma and UNet timestep t (the
    sample's grid knows t exactly; deriving it from sigma would round it).
    """

    def __init__(self, network: Network, prediction_type: str) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r}; expected {PREDICTION_TYPES}")
        self.network = network
        self.prediction_type = prediction_type

    def __call__(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        t: torch.Tensor,
        context: Any,
        concat: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, C, h, w) VE latents, sigma (B,), t (B,) -> denoised (B, C, h, w) float32;
        `concat` (B, C', h, w) joins the scaled input unscaled (LDM's concat conditioning);
        `labels` (B,) are class labels of class-conditional networks."""
        x_in = x * per_sample(model_input_scale(sigma), x)  # (B, C, h, w) VP network input
        if concat is not None:
            x_in = torch.cat([x_in, concat], dim=1)  # (B, C + C', h, w)
        t = t.to(x.device)
        if labels is None:  # text-only networks take three arguments
            output = self.network(x_in, t, context).float()
        else:
            output = self.network(x_in, t, context, labels.to(x.device)).float()
        return denoised_from_output(x, sigma, output, self.prediction_type)
