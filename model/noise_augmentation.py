"""The SD x4 upscaler's noise augmentation of its low-resolution input (CompVis
`ImageConcatWithNoiseAugmentation`; diffusers' `low_res_scheduler.add_noise`).

The low-res image is noised to a chosen training step of its own schedule before it is concatenated
to the latent, and that step is the UNet's class label (Ho et al. 2022, "Cascaded Diffusion Models",
conditioning augmentation; LDM Sec. 4.4 concatenates the low-res image for super-resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.sampling.schedule import ScheduleConfig, alphas_cumprod


@dataclass(frozen=True)
class NoiseAugmentation:
    """The low-res image's forward process q(x_l | x_0) at step `noise_level` <= max_noise_level."""

    schedule: ScheduleConfig
    max_noise_level: int = 350

    def __call__(self, image: torch.Tensor, noise: torch.Tensor, noise_level: int) -> torch.Tensor:
        """sqrt(a_l) image + sqrt(1 - a_l) noise, for image and noise (B, 3, h, w) float32."""
        if not 0 <= noise_level <= self.max_noise_level:
            raise ValueError(f"noise_level {noise_level} is outside [0, {self.max_noise_level}]")
        alpha = alphas_cumprod(self.schedule)[noise_level]  # float32, as diffusers' add_noise
        return alpha**0.5 * image + (1 - alpha) ** 0.5 * noise
