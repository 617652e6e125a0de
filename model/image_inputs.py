"""How images enter a sample: the initial latent, the mask, concatenated channels, known regions.

- text-to-image: x = sigma_0 * N(0, I).
- image-to-image (SDEdit, Meng et al. 2022): x = z0 + sigma_t * eps at the step strength selects.
- inpainting with an inpainting model (LDM Sec. 3.3, concat conditioning): the UNet also sees the
  latent-size mask and the masked image's latent, concatenated to its input on every call.
- inpainting with any other model: after every step the known region is re-imposed, noised to the
  next step's level, and the final latent takes z0 there (diffusers' 4-channel inpainting).
- super-resolution (LDM Sec. 4.4): the low-res image is concatenated to the latent on every call;
  the SD x4 upscaler first noise-augments it to `noise_level`, which is also its class label.

Random draws follow diffusers' pipelines, all from the sample's own generator: the init image's
posterior (when encoded), the noise, then the masked image's posterior (inpainting, drawn even
when a 4-channel model does not use it, so later draws line up); for upscaling the low-res
image's augmentation noise, then the latent's noise (diffusers' StableDiffusionUpscalePipeline;
LDMSuperResolutionPipeline draws the latent's noise alone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from model.pipeline import Pipeline, to_pixels
from model.sampling.schedule import SamplingGrid
from model.sampling.trajectory import KnownRegion


@dataclass(frozen=True)
class StartingPoint:
    """A sample's initial VE latent and the image inputs that stay with it."""

    x: torch.Tensor  # (1, C, h, w)
    concat: torch.Tensor | None = None  # (1, C', h, w) channels the UNet sees beside x
    known: KnownRegion | None = None
    labels: torch.Tensor | None = None  # (1,) class label of class-conditional UNets


def binary_mask(mask: Image.Image) -> torch.Tensor:
    """White = repaint: (1, 1, H, W) of 0/1, from the alpha channel when the image has a
    non-opaque one, else from luminance (diffusers binarizes at 0.5)."""
    if mask.mode in ("RGBA", "LA") and np.asarray(mask.getchannel("A")).min() < 255:
        values = 255 - np.asarray(mask.getchannel("A")).astype(np.float32)  # transparent = repaint
    else:
        values = np.asarray(mask.convert("L")).astype(np.float32)
    return torch.from_numpy((values / 255.0 >= 0.5).astype(np.float32))[None, None]


def starting_point(
    pipeline: Pipeline,
    grid: SamplingGrid,
    noise: Callable[[], torch.Tensor],
    generator: torch.Generator,
    init_image: Image.Image | None,
    mask_image: Image.Image | None,
    full_strength: bool,
) -> StartingPoint:
    """The initial latent of one sample and, for inpainting, its mask inputs."""
    if not pipeline.text_conditioned and (init_image is not None or mask_image is not None):
        raise ValueError(f"this model runs {', '.join(pipeline.tasks)}: no init image or mask")
    concat_channels = pipeline.concat_channels
    if concat_channels and mask_image is None:
        raise ValueError("this is an inpainting model: it needs an init image and a mask")
    if init_image is None:
        return StartingPoint(noise() * grid.init_noise_scale)
    pixels = to_pixels(init_image)  # (1, 3, H, W)
    pure_noise = mask_image is not None and full_strength  # diffusers' inpainting at strength 1
    encode_init = not (pure_noise and concat_channels)  # the 9-channel model skips z0 then
    z0 = pipeline.encode_pixels(pixels, generator) if encode_init else None
    eps = noise()
    if pure_noise:
        x = eps * grid.init_noise_scale
    else:
        assert z0 is not None
        x = z0 + eps * grid.sigmas[0]  # the forward process at the first step run
    if mask_image is None:
        return StartingPoint(x)
    mask = binary_mask(mask_image)  # (1, 1, H, W)
    if mask.shape[-2:] != pixels.shape[-2:]:
        raise ValueError(f"mask is {mask_image.size}, the image {init_image.size}")
    masked = pipeline.encode_pixels(pixels * (mask < 0.5), generator)  # (1, C, h, w)
    latent_mask = F.interpolate(mask, size=masked.shape[-2:]).to(pipeline.device)  # nearest
    if concat_channels:
        return StartingPoint(x, concat=torch.cat([latent_mask, masked], dim=1))
    assert z0 is not None
    return StartingPoint(x, known=KnownRegion(z0, eps, latent_mask))


def upscale_start(
    pipeline: Pipeline,
    grid: SamplingGrid,
    noise: Callable[[], torch.Tensor],
    generator: torch.Generator,
    low_res: Image.Image | None,
    noise_level: int,
) -> StartingPoint:
    """Pure noise, with the low-res image (1, 3, h, w) as concatenated channels: as is for LDM-SR
    (diffusers' LDMSuperResolutionPipeline), noise-augmented with its noise level as the class
    label for the x4 upscaler (StableDiffusionUpscalePipeline)."""
    if "upscale" not in pipeline.tasks:
        raise ValueError("this model is not an upscaler")
    if low_res is None:
        raise ValueError("this is an upscaling model: it needs a low-resolution image")
    pixels = to_pixels(low_res)  # (1, 3, h, w) in [-1, 1]
    augment = pipeline.upscaler
    if augment is None:  # LDM-SR: no augmentation, no label
        return StartingPoint(noise() * grid.init_noise_scale, concat=pixels.to(pipeline.device))
    augmentation_noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float32)
    concat = augment(pixels, augmentation_noise, noise_level).to(pipeline.device)  # (1, 3, h, w)
    x = noise() * grid.init_noise_scale  # (1, C, h, w): drawn after the augmentation noise
    labels = torch.tensor([noise_level], dtype=torch.long, device=pipeline.device)  # (1,)
    return StartingPoint(x, concat=concat, labels=labels)
