"""Noise schedules and per-request sigma/timestep grids, matching diffusers' schedulers.

Everything here works in k-diffusion's VE parameterisation, x = x0 + sigma * eps. A VP latent at
training step t (alphas_cumprod a_t) is x_vp = x / sqrt(1 + sigma_t^2), sigma_t^2 = (1 - a_t) / a_t.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
# The diffusers schedulers whose timestep grids `sampling_grid` reproduces (a sampler's family).
DDIM_GRID, EULER_GRID, DPM_GRID = "DDIM", "EulerDiscrete", "DPMSolverMultistep"
GRID_FAMILIES = (DDIM_GRID, EULER_GRID, DPM_GRID)
# scheduler_config.json keys that change the schedule in ways this module does not implement.
_UNSUPPORTED_KEYS = {"trained_betas": None, "rescale_betas_zero_snr": False}
KARRAS_RHO = 7.0  # Karras et al. (2022), Eq. 5: rho = 7 "performs well"


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise-schedule part of a diffusers ``scheduler_config.json``; defaults are SD 1.x."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 1
    set_alpha_to_one: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (
            ("beta_schedule", BETA_SCHEDULES),
            ("prediction_type", PREDICTION_TYPES),
            ("timestep_spacing", TIMESTEP_SPACINGS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {allowed}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ScheduleConfig:
        """From a scheduler_config.json dict; unknown keys (``_class_name``, ...) are ignored."""
        for key, default in _UNSUPPORTED_KEYS.items():
            if config.get(key, default) != default:
                raise ValueError(f"scheduler config {key}={config[key]!r} is not supported")
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in config.items() if key in names})


def betas(config: ScheduleConfig) -> torch.Tensor:
    """Training betas (T,) float32, computed exactly as diffusers' schedulers do."""
    n = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    if config.beta_schedule == "scaled_linear":
        start, end = config.beta_start**0.5, config.beta_end**0.5
        return torch.linspace(start, end, n, dtype=torch.float32) ** 2

    def alpha_bar(t: float) -> float:  # Nichol & Dhariwal (2021), Eq. 17 with s = 0.008
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    # max_beta 0.999 avoids the singularity at t = T (Nichol & Dhariwal 2021, Sec. 3.2).
    values = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)]
    return torch.tensor(values, dtype=torch.float32)


def alphas_cumprod(config: ScheduleConfig) -> torch.Tensor:
    """Cumulative signal rates a_t = prod(1 - beta) (T,) float32."""
    return torch.cumprod(1.0 - betas(config), dim=0)


def training_sigmas(config: ScheduleConfig) -> torch.Tensor:
    """VE noise level of each training step, sigma_t = sqrt((1 - a_t) / a_t) (T,) float32."""
    alphas = alphas_cumprod(config)
    return ((1 - alphas) / alphas) ** 0.5


def sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma by log-sigma interpolation (as diffusers)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]  # (T, N)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return ((1 - w) * low + w * high).reshape(sigma.shape)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int) -> np.ndarray:
    """Noise levels from Karras et al. (2022), Eq. 5 (steps,), descending, without the final 0."""
    ramp = np.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / KARRAS_RHO), sigma_max ** (1 / KARRAS_RHO)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** KARRAS_RHO


def spaced_timesteps(config: ScheduleConfig, steps: int, family: str) -> np.ndarray:
    """The inference timesteps (steps,) each diffusers scheduler family picks for a spacing."""
    n_train, spacing = config.num_train_timesteps, config.timestep_spacing
    if spacing == "linspace":
        if family == EULER_GRID:  # fractional; sigmas are interpolated
            return np.linspace(0, n_train - 1, steps, dtype=np.float32)[::-1].copy()
        if family == DPM_GRID:  # steps + 1 points, drop t = 0
            return np.linspace(0, n_train - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
        return np.linspace(0, n_train - 1, steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = n_train // (steps + 1 if family == DPM_GRID else steps)
        timesteps = (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64)
        if family == DPM_GRID:
            timesteps = timesteps + ratio
        return timesteps + config.steps_offset
    # trailing; [:steps] drops the spurious extra point np.arange yields for e.g. steps = 61
    return np.arange(n_train, 0, -n_train / steps).round()[:steps].astype(np.int64) - 1


@dataclass(frozen=True, eq=False)
class SamplingGrid:
    """One request's discretisation: VE sigmas, their UNet timesteps, the initial noise scale."""

    sigmas: torch.Tensor  # (steps + 1,) float32 descending; sigmas[-1] is the final noise level
    timesteps: torch.Tensor  # (steps,) float32: UNet t for sigmas[:-1]
    init_noise_scale: float  # initial VE latent x = init_noise_scale * N(0, I)
    log_sigmas: torch.Tensor  # (T,) float32 log training sigmas, for `timestep_for` interpolation
    # (steps,) DDIM's own targets t - T // steps where they are not the next grid sigma, else None
    sigmas_to: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def tail(self, start: int) -> SamplingGrid:
        """The grid from step `start` on: where image-to-image enters (SDEdit, Meng et al. 2022)."""
        if not 0 <= start < self.steps:
            raise ValueError(f"start={start} must be in [0, {self.steps})")
        return replace(
            self,
            sigmas=self.sigmas[start:],
            timesteps=self.timesteps[start:],
            sigmas_to=None if self.sigmas_to is None else self.sigmas_to[start:],
        )

    @cached_property
    def _timestep_by_sigma(self) -> dict[float, torch.Tensor]:
        """Grid sigma -> its UNet t (0-d); the first step wins where a grid repeats a sigma."""
        table: dict[float, torch.Tensor] = {}
        for sigma, t in zip(self.sigmas[:-1].tolist(), self.timesteps.clone(), strict=True):
            table.setdefault(sigma, t)
        return table

    def timestep_for(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """UNet t for sigma (any shape): exact for grid sigmas, else log-sigma interpolation."""
        sigma = torch.as_tensor(sigma, dtype=torch.float32).detach().cpu()
        if sigma.numel() == 1 and (t := self._timestep_by_sigma.get(float(sigma))) is not None:
            return t.reshape(sigma.shape).clone()  # the engine's case: one grid sigma per step
        flat = sigma.reshape(-1)  # (N,)
        match = flat[:, None] == self.sigmas[None, :-1]  # (N, steps)
        on_grid = match.any(dim=1)  # (N,)
        t = self.timesteps[match.float().argmax(dim=1)]  # (N,)
        if not bool(on_grid.all()):  # off the grid (second-order midpoints): interpolate
            interp = sigma_to_t(flat.double().numpy(), self.log_sigmas.numpy())
            t = torch.where(on_grid, t, torch.from_numpy(interp).float())
        return t.reshape(sigma.shape)


def sampling_grid(
    config: ScheduleConfig, family: str, steps: int, karras: bool = False
) -> SamplingGrid:
    """The grid a diffusers scheduler family uses (see GRID_FAMILIES), in VE sigma space.

    DDIM_GRID: DDIMScheduler timesteps (also CompVis PLMS's: DDIM leading with steps_offset 1); the
    final sigma is that of alphas_cumprod[0] (0 if set_alpha_to_one), and `sigmas_to` holds DDIM's
    targets t - T // steps where they are not the next grid timestep (linspace/trailing spacing).
    EULER_GRID: Euler/HeunDiscreteScheduler. DPM_GRID: DPMSolverMultistepScheduler.
    karras=True: Karras sigmas as each scheduler's use_karras_sigmas (DDIM_GRID uses
    EulerDiscreteScheduler's, which diffusers' DDIM lacks).
    """
    if family not in GRID_FAMILIES:
        raise ValueError(f"unknown grid family {family!r}; expected one of {GRID_FAMILIES}")
    if not 1 <= steps <= config.num_train_timesteps:
        raise ValueError(f"steps={steps} must be in [1, {config.num_train_timesteps}]")
    train = training_sigmas(config)  # (T,)
    train_np = train.numpy()
    log_sigmas = np.log(train_np)  # float32, as diffusers
    final = 0.0 if config.set_alpha_to_one else float(train[0])
    sigmas_to_t: torch.Tensor | None = None
    if karras and family == DPM_GRID:
        # DPMSolverMultistep: Karras over the full training range, timesteps rounded.
        sigmas = karras_sigmas(float(train_np[0]), float(train_np[-1]), steps)
        timesteps = sigma_to_t(sigmas, log_sigmas)
        if config.beta_schedule != "squaredcos_cap_v2":
            timesteps = timesteps.round()
        timesteps = timesteps.astype(np.int64)  # diffusers truncates the cosine ones
    else:
        timesteps = spaced_timesteps(config, steps, EULER_GRID if karras else family)
        if timesteps.max() >= len(train_np):
            raise ValueError(f"steps={steps} with steps_offset={config.steps_offset} overflows")
        sigmas = np.interp(timesteps, np.arange(len(train_np)), train_np)  # float64
        if karras:  # Euler/Heun: Karras between the spaced grid's own extremes
            sigmas = karras_sigmas(sigmas[-1].item(), sigmas[0].item(), steps)
            timesteps = sigma_to_t(sigmas, log_sigmas)
    if family == DDIM_GRID and not karras:
        prev = timesteps - config.num_train_timesteps // steps
        sigmas_to = np.where(prev >= 0, train_np[prev.clip(min=0)], final).astype(np.float32)
        if not np.array_equal(sigmas_to[:-1], sigmas[1:]):
            sigmas_to_t = torch.from_numpy(sigmas_to)
    else:
        final = 0.0
    sigmas_t = torch.from_numpy(np.concatenate([sigmas, [final]]).astype(np.float32))
    if family == EULER_GRID and config.timestep_spacing != "leading":
        init_noise_scale = sigmas_t.max()
    elif family == EULER_GRID:
        init_noise_scale = (sigmas_t.max() ** 2 + 1) ** 0.5
    else:  # VP unit noise: x_vp = N(0, I) at sigmas[0]
        init_noise_scale = (sigmas_t[0] ** 2 + 1) ** 0.5
    return SamplingGrid(
        sigmas=sigmas_t,
        timesteps=torch.from_numpy(np.asarray(timesteps, dtype=np.float32).copy()),
        init_noise_scale=float(init_noise_scale),
        log_sigmas=torch.from_numpy(log_sigmas),
        sigmas_to=sigmas_to_t,
    )


def ve_to_vp(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """The VP latent the VAE expects from a VE latent at noise level sigma: x / sqrt(1 + s^2)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return x / (1 + sigma**2) ** 0.5
