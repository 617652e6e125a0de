"""Parity of model/sampling with diffusers' schedulers (test-only oracle) and CompVis PLMS."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from model.sampling.denoiser import Denoiser
from model.sampling.registry import SAMPLERS
from model.sampling.schedule import ScheduleConfig, alphas_cumprod, training_sigmas
from model.sampling.trajectory import Trajectory, run_trajectory

CONFIGS = {
    "sd1_eps_leading": ScheduleConfig(),
    "sd2_v_leading": ScheduleConfig(prediction_type="v_prediction"),
    "linspace": ScheduleConfig(timestep_spacing="linspace", steps_offset=0),
    "trailing": ScheduleConfig(timestep_spacing="trailing", steps_offset=0),
    # Covers the cosine and linear beta schedules and set_alpha_to_one (DDIM's final sigma 0).
    "cosine_v_trailing": ScheduleConfig(
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        timestep_spacing="trailing",
        steps_offset=0,
        set_alpha_to_one=True,
    ),
    "linear_linspace": ScheduleConfig(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", timestep_spacing="linspace"
    ),
}
# (sampler, karras, eta, diffusers scheduler class, extra constructor kwargs)
CASES = [
    ("ddim", False, 0.0, DDIMScheduler, {"clip_sample": False}),
    ("ddim", False, 0.5, DDIMScheduler, {"clip_sample": False}),
    ("euler", False, 0.0, EulerDiscreteScheduler, {}),
    ("euler", True, 0.0, EulerDiscreteScheduler, {"use_karras_sigmas": True}),
    ("euler_a", False, 1.0, EulerAncestralDiscreteScheduler, {}),  # diffusers' ancestral eta
    ("heun", False, 0.0, HeunDiscreteScheduler, {}),
    ("heun", True, 0.0, HeunDiscreteScheduler, {"use_karras_sigmas": True}),
    ("dpmpp_2m", False, 0.0, DPMSolverMultistepScheduler, {}),
    ("dpmpp_2m", True, 0.0, DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
]
DPM_KWARGS = {"algorithm_type": "dpmsolver++", "solver_order": 2}
SHAPE = (1, 4, 8, 8)  # (B, C, h, w) latent
STEPS = (7, 25)  # 7 does not divide 1000: exercises DDIM's t - T // steps target


def fake_net(x_in: torch.Tensor, t: torch.Tensor, context: object = None) -> torch.Tensor:
    """A deterministic stand-in for the UNet that depends on its input and on t."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return 0.1 * x_in + 0.05 * t / 1000 + 0.05 * torch.sin(3 * x_in)


def make_scheduler(config: ScheduleConfig, cls: type, extra: dict) -> object:
    kwargs = dataclasses.asdict(config) | extra
    if cls is DPMSolverMultistepScheduler:
        kwargs |= DPM_KWARGS
    names = inspect.signature(cls.__init__).parameters
    return cls(**{key: value for key, value in kwargs.items() if key in names})


def diffusers_sample(scheduler, steps: int, seed: int, eta: float) -> torch.Tensor:
    """The StableDiffusionPipeline denoising loop with one per-sample generator."""
    scheduler.set_timesteps(steps)
    if len(set(scheduler.timesteps.tolist())) < len(scheduler.timesteps):
        # Repeated timesteps (DPM-Solver, Karras, cosine: diffusers truncates them to int) make
        # diffusers start at the second occurrence and run off the end of its sigmas (IndexError);
        # pin the start so the oracle runs the intended schedule.
        scheduler.set_begin_index(0)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn(SHAPE, generator=generator) * scheduler.init_noise_sigma
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {"generator": generator} if "generator" in step_params else {}
    if isinstance(scheduler, DDIMScheduler):
        step_kwargs["eta"] = eta
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(latents, t)
        latents = scheduler.step(fake_net(x_in, t), t, latents, **step_kwargs).prev_sample
    return latents


def our_sample(config, sampler: str, steps: int, seed: int, eta: float, karras: bool):
    """The engine's per-sample path: registry entry, Trajectory, the production Denoiser."""
    entry = SAMPLERS[sampler]
    grid = entry.grid(config, steps, karras)
    generator = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator) * grid.init_noise_scale  # VE latent at sigmas[0]
    denoiser = Denoiser(fake_net, config.prediction_type)

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.reshape(1)  # (B,)
        return denoiser(x, sigma, grid.timestep_for(sigma), None)

    noise = lambda: torch.randn(SHAPE, generator=generator)  # noqa: E731
    return run_trajectory(Trajectory(entry, x, grid, noise, eta), denoise)


@pytest.mark.parametrize("config_name", CONFIGS)
def test_training_schedule_matches_diffusers(config_name: str) -> None:
    config = CONFIGS[config_name]
    scheduler = make_scheduler(config, DDIMScheduler, {})
    assert torch.equal(alphas_cumprod(config), scheduler.alphas_cumprod)
    expected = ((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5
    assert torch.equal(training_sigmas(config), expected)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("config_name", CONFIGS)
@pytest.mark.parametrize(("sampler", "karras", "eta", "cls", "extra"), CASES)
def test_grid_and_sampling_match_diffusers(sampler, karras, eta, cls, extra, config_name, steps):
    config = CONFIGS[config_name]
    scheduler = make_scheduler(config, cls, extra)
    scheduler.set_timesteps(steps)
    grid = SAMPLERS[sampler].grid(config, steps, karras)
    sigmas, timesteps = getattr(scheduler, "sigmas", None), scheduler.timesteps.float()
    if cls is HeunDiscreteScheduler:  # diffusers repeats each interior sigma/t for the 2nd stage
        sigmas = torch.cat([sigmas[:1], sigmas[1::2]])
        timesteps = torch.cat([timesteps[:1], timesteps[1::2]])
    if cls is DDIMScheduler:  # DDIM keeps alphas; its grid in VE sigmas
        train = training_sigmas(config)
        final = 0.0 if config.set_alpha_to_one else train[0]
        sigmas = torch.cat([train[scheduler.timesteps], torch.tensor([final])])
    if cls in (DDIMScheduler, DPMSolverMultistepScheduler):  # VP unit noise, as a VE latent
        assert scheduler.init_noise_sigma == 1.0
        assert grid.init_noise_scale == pytest.approx(float((1 + grid.sigmas[0] ** 2) ** 0.5))
    else:
        assert grid.init_noise_scale == pytest.approx(float(scheduler.init_noise_sigma), rel=1e-6)
    assert torch.equal(grid.timesteps, timesteps)
    assert torch.equal(grid.sigmas, sigmas)

    expected = diffusers_sample(scheduler, steps, seed=1234, eta=eta)
    actual = our_sample(config, sampler, steps, seed=1234, eta=eta, karras=karras)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


def compvis_plms(config: ScheduleConfig, steps: int, seed: int) -> torch.Tensor:
    """CompVis ``PLMSSampler.plms_sampling`` (uniform DDIM timesteps, eta 0), transcribed."""
    alphas = alphas_cumprod(config)
    # make_ddim_timesteps("uniform") is range(0, T, T // steps) + 1, which has more than `steps`
    # entries when steps does not divide T (3 -> 4, the last one t = 1000 out of range); we take
    # exactly `steps` of them, as diffusers' "leading" spacing does.
    timesteps = [k * (config.num_train_timesteps // steps) + 1 for k in range(steps)]
    a_all = alphas[timesteps]
    a_prev_all = torch.cat([alphas[:1], alphas[timesteps[:-1]]])
    time_range = timesteps[::-1]
    generator = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn(SHAPE, generator=generator)

    def eps_of(x: torch.Tensor, t: int) -> torch.Tensor:
        out = fake_net(x, torch.tensor([float(t)]))
        if config.prediction_type == "v_prediction":  # predict_eps_from_z_and_v
            return alphas[t] ** 0.5 * out + (1 - alphas[t]) ** 0.5 * x
        return out

    def x_prev_of(x: torch.Tensor, e_t: torch.Tensor, index: int) -> torch.Tensor:
        a_t, a_prev = a_all[index], a_prev_all[index]
        pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t**0.5
        return a_prev**0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t

    old_eps: list[torch.Tensor] = []
    for i, t in enumerate(time_range):
        index = steps - i - 1
        t_next = time_range[min(i + 1, steps - 1)]
        e_t = eps_of(x, t)
        if not old_eps:
            x_prev = x_prev_of(x, e_t, index)
            e_t_prime = (e_t + eps_of(x_prev, t_next)) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x_prev_of(x, e_t_prime, index)
        old_eps = [*old_eps[-3:], e_t]
    return x


@pytest.mark.parametrize("config_name", ["sd1_eps_leading", "sd2_v_leading"])
@pytest.mark.parametrize("steps", (2, 3, 8, 25))
def test_plms_matches_compvis(config_name: str, steps: int) -> None:
    config = CONFIGS[config_name]
    grid = SAMPLERS["plms"].grid(config, steps, False)
    assert grid.timesteps.tolist() == [k * (1000 // steps) + 1 for k in range(steps)][::-1]
    expected = compvis_plms(config, steps, seed=7)
    actual = our_sample(config, "plms", steps, seed=7, eta=0.0, karras=False)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
