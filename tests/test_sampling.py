"""model/sampling against analytic solutions, the registry's facts, and the small pieces.

Everything runs the production path: registry entries start the generators, Trajectory drives
them (the engine's per-sample state), Denoiser and the CFG guider are the engine's own.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from model.sampling import samplers
from model.sampling.denoiser import Denoiser, denoised_from_output, model_input_scale
from model.sampling.guidance import cfg_combine, cfg_rows, guided_denoise, needs_uncond
from model.sampling.registry import SAMPLERS, sampler_entry
from model.sampling.schedule import (
    SamplingGrid,
    ScheduleConfig,
    karras_sigmas,
    sampling_grid,
    training_sigmas,
    ve_to_vp,
)
from model.sampling.trajectory import Trajectory, run_trajectory

DATA_STD = 1.0  # s: the data distribution is N(0, s^2 I)
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "plms", "ddim")


def ideal_denoiser(s: float):
    """E[x0 | x] for x0 ~ N(0, s^2), x = x0 + sigma * eps."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * s**2 / (s**2 + sigma**2)

    return denoise


def bare_grid(sigmas: torch.Tensor) -> SamplingGrid:
    """A grid of given VE sigmas (the ideal denoiser needs no timesteps)."""
    steps = len(sigmas) - 1
    return SamplingGrid(sigmas, torch.zeros(steps), float(sigmas[0]), torch.zeros(1))


def karras_grid(steps: int) -> SamplingGrid:
    sigmas = karras_sigmas(0.002, 80.0, steps)  # Karras et al. (2022) EDM range
    return bare_grid(torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)))


def sample(sampler: str, grid: SamplingGrid, x: torch.Tensor, denoise, noise=None, eta=None):
    """One sample through the registry and a Trajectory; returns the VP latent."""
    trajectory = Trajectory(sampler_entry(sampler), x, grid, noise or (lambda: None), eta)
    return run_trajectory(trajectory, denoise)


def ode_error(sampler: str, grid: SamplingGrid) -> float:
    """Max relative error against the exact probability-flow ODE solution."""
    generator = torch.Generator("cpu").manual_seed(0)
    sigmas = grid.sigmas
    x_t = torch.randn(512, 16, generator=generator) * sigmas[0]  # 512 samples, d = 16
    s2 = DATA_STD**2
    exact = x_t * ((s2 + sigmas[-1] ** 2) / (s2 + sigmas[0] ** 2)) ** 0.5  # VE at sigmas[-1]
    out = sample(sampler, grid, x_t, ideal_denoiser(DATA_STD))
    exact = ve_to_vp(exact, sigmas[-1])
    return float((out - exact).abs().max() / exact.abs().max())


def test_registry_entries_state_their_functions_facts() -> None:
    assert set(SAMPLERS) == {"ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m"}
    for name, entry in SAMPLERS.items():
        assert entry.name == name and entry.function is getattr(samplers, name)
        params = list(inspect.signature(entry.function).parameters)
        assert params[:2] == ["x", "sigmas"] and set(params[2:]) == entry.inputs
        assert not any(
            p.kind is p.VAR_KEYWORD for p in inspect.signature(entry.function).parameters.values()
        ), f"{name} swallows options"
        assert entry.takes_eta == (entry.default_eta is not None), name
    assert {n for n, e in SAMPLERS.items() if e.takes_eta} == {"ddim", "euler_a"}
    assert SAMPLERS["dpmpp_2m"].a1111_name(karras=True) == "DPM++ 2M Karras"
    with pytest.raises(ValueError, match="unknown sampler 'lms'"):
        sampler_entry("lms")


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize("steps", (1, 2, 3, 10))
@pytest.mark.parametrize("karras", (False, True))
def test_declared_evaluations_per_step_are_the_real_ones(sampler, steps, karras) -> None:
    """Progress in steps rests on this: the registry's counts equal the generator's calls."""
    for config in (ScheduleConfig(), ScheduleConfig(set_alpha_to_one=True)):
        entry = SAMPLERS[sampler]
        grid = entry.grid(config, steps, karras)
        calls = []

        def denoise(x, sigma, calls=calls):
            calls.append(float(sigma))
            return ideal_denoiser(DATA_STD)(x, sigma)

        trajectory = Trajectory(
            entry, torch.ones(1, 4, 2, 2), grid, lambda: torch.zeros(1, 4, 2, 2)
        )
        seen = []
        while trajectory.pending is not None:
            trajectory.advance(denoise(*trajectory.pending))
            seen.append(trajectory.steps_done)
        assert len(calls) == sum(entry.evaluations(grid.sigmas)), (sampler, calls)
        assert torch.isfinite(trajectory.latent).all()
        if steps <= 2:  # counted by hand from the algorithms
            expected = {"heun": [1, 3], "plms": [2, 3]}.get(sampler, [1, 2])[steps - 1]
            if sampler == "plms" and steps == 1 and grid.sigmas[-1] == 0:
                expected = 1  # no second point at sigma 0: plain Euler
            assert len(calls) == expected, (sampler, steps, karras, calls)
        # steps never go back, never reach the total before the end, and reach it at the end
        assert seen == sorted(seen) and seen[-1] == steps and steps not in seen[:-1]


def test_heun_reports_steps_not_evaluations() -> None:
    entry = SAMPLERS["heun"]
    grid = entry.grid(ScheduleConfig(), 5, False)
    trajectory = Trajectory(entry, torch.ones(1, 4, 2, 2), grid, lambda: None)
    seen = []
    while trajectory.pending is not None:
        trajectory.advance(ideal_denoiser(DATA_STD)(*trajectory.pending))
        seen.append(trajectory.steps_done)
    assert seen == [0, 1, 1, 2, 2, 3, 3, 4, 5]  # 2 calls a step, 1 on the last (to sigma 0)


@pytest.mark.parametrize("sampler", DETERMINISTIC)
def test_deterministic_samplers_converge_to_ode_solution(sampler: str) -> None:
    errors = [ode_error(sampler, karras_grid(n)) for n in (10, 20, 40)]
    assert errors[2] < errors[1] < errors[0]
    assert errors[2] < 0.07
    order = np.log2(errors[1] / errors[2])  # observed convergence order
    assert order > (0.9 if sampler in ("euler", "ddim") else 1.8), errors


def test_second_order_samplers_beat_euler() -> None:
    for steps in (20, 40):
        euler = ode_error("euler", karras_grid(steps))
        for sampler in ("heun", "dpmpp_2m", "plms"):
            assert ode_error(sampler, karras_grid(steps)) < euler / 2, (sampler, steps)


@pytest.mark.parametrize("sampler", ("ddim", "plms"))
def test_ddim_grid_ends_at_nonzero_sigma(sampler: str) -> None:
    """DDIM/PLMS stop at alphas_cumprod[0]'s sigma; the ODE solution is taken there."""
    grid = SAMPLERS[sampler].grid(ScheduleConfig(), 50, False)
    assert grid.sigmas[-1] == training_sigmas(ScheduleConfig())[0] > 0
    limit = 0.05 if sampler == "ddim" else 0.005  # first order vs 4th-order multistep
    assert ode_error(sampler, grid) < limit


def test_ddim_eta0_is_euler_and_linspace_target_quirk() -> None:
    grid = SAMPLERS["ddim"].grid(ScheduleConfig(), 20, False)
    assert grid.sigmas_to is None  # leading spacing: DDIM's t - T // n is the next grid t
    euler_error = ode_error("euler", grid)
    assert ode_error("ddim", grid) == pytest.approx(euler_error, rel=1e-4)
    linspace = SAMPLERS["ddim"].grid(ScheduleConfig(timestep_spacing="linspace"), 20, False)
    assert linspace.sigmas_to is not None
    assert not torch.equal(linspace.sigmas_to[:-1], linspace.sigmas[1:-1])


def test_euler_a_honours_eta() -> None:
    """eta 0 is plain Euler bit for bit; eta 1 (the default) injects noise."""
    grid = SAMPLERS["euler"].grid(ScheduleConfig(), 12, False)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3)) * grid.init_noise_scale

    def run(sampler: str, eta: float | None) -> torch.Tensor:
        generator = torch.Generator().manual_seed(9)
        noise = lambda: torch.randn(2, 4, 4, 4, generator=generator)  # noqa: E731
        return sample(sampler, grid, x, ideal_denoiser(0.5), noise, eta)

    euler = run("euler", None)
    assert torch.equal(run("euler_a", 0.0), euler)
    assert torch.equal(run("euler_a", None), run("euler_a", 1.0))  # registry default
    assert (run("euler_a", 1.0) - euler).abs().mean() > 0.05
    half = (run("euler_a", 0.5) - euler).abs().mean()
    assert 0 < half < (run("euler_a", 1.0) - euler).abs().mean()


def variance_recursion(sigmas: torch.Tensor, eta: float, s: float) -> float:
    """Exact output variance of an ancestral sampler with the ideal denoiser on N(0, s^2) data."""
    var = float(sigmas[0]) ** 2 + s**2
    values = sigmas.double().tolist()
    for sigma, sigma_to in zip(values[:-1], values[1:], strict=True):
        up = min(sigma_to, eta * (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5)
        down = (sigma_to**2 - up**2) ** 0.5
        c = s**2 / (s**2 + sigma**2)  # D = c * x
        var = (c + down * (1 - c) / sigma) ** 2 * var + up**2
    return var**0.5


@pytest.mark.parametrize(
    ("sampler", "eta"), [("euler_a", 1.0), ("euler_a", 0.5), ("ddim", 0.5), ("ddim", 1.0)]
)
@pytest.mark.parametrize("s", (0.5, 1.0))
def test_ancestral_samplers_reach_data_std(sampler: str, eta: float, s: float) -> None:
    errors = []
    for steps, karras in ((30, False), (200, True)):
        grid = SAMPLERS[sampler].grid(ScheduleConfig(), steps, karras)
        assert grid.sigmas_to is None
        generator = torch.Generator("cpu").manual_seed(1)
        shape = (8192, 4)
        x_t = torch.randn(shape, generator=generator) * grid.sigmas[0]
        deterministic = x_t * s / (s**2 + grid.sigmas[0] ** 2) ** 0.5
        out = sample(
            sampler,
            grid,
            x_t,
            ideal_denoiser(s),
            lambda shape=shape, generator=generator: torch.randn(shape, generator=generator),
            eta,
        )
        out = out * (1 + grid.sigmas[-1] ** 2) ** 0.5  # back to VE at the final sigma
        std = float(out.std())
        # The step-by-step variance the update rule implies, to sampling error (~0.8% here).
        assert std == pytest.approx(variance_recursion(grid.sigmas, eta, s), rel=0.025)
        # Fresh noise was injected: the output is not the ODE solution from the same x_T.
        correlation = torch.corrcoef(torch.stack([out.flatten(), deterministic.flatten()]))[0, 1]
        assert correlation < 0.9
        if eta == 1.0:
            errors.append(abs(std - s) / s)
    if errors:
        assert errors[1] < 0.03  # many small steps: std ~= s
        assert errors[1] < errors[0]


def test_schedule_config_from_dict() -> None:
    sd15 = {  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    }
    assert ScheduleConfig.from_dict(sd15) == ScheduleConfig()
    sd2 = ScheduleConfig.from_dict(sd15 | {"prediction_type": "v_prediction"})
    assert sd2.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="beta_schedule"):
        ScheduleConfig.from_dict({"beta_schedule": "sigmoid"})
    with pytest.raises(ValueError, match="trained_betas"):
        ScheduleConfig.from_dict({"trained_betas": [0.1] * 1000})
    with pytest.raises(ValueError, match="unknown grid family"):
        sampling_grid(ScheduleConfig(), "euler", 10)  # families are diffusers schedulers


def test_grid_timestep_lookup() -> None:
    config = ScheduleConfig()
    grid = SAMPLERS["euler"].grid(config, 10, True)
    assert grid.steps == 10 and grid.sigmas.shape == (11,) and grid.sigmas[-1] == 0
    assert torch.equal(grid.timestep_for(grid.sigmas[:-1]), grid.timesteps)  # exact
    assert grid.timestep_for(grid.sigmas[3]).shape == ()
    for i in range(grid.steps):  # one sigma at a time (the engine's call): table lookup
        assert torch.equal(grid.timestep_for(grid.sigmas[i]), grid.timesteps[i])
        assert torch.equal(grid.timestep_for(grid.sigmas[i : i + 1]), grid.timesteps[i : i + 1])
    grid.timestep_for(grid.sigmas[0]).add_(1)  # a caller's in-place edit leaves the grid alone
    assert torch.equal(grid.timestep_for(grid.sigmas[0]), grid.timesteps[0])
    assert torch.equal(grid.timestep_for(float(grid.sigmas[2])), grid.timesteps[2])
    train = training_sigmas(config)
    t = grid.timestep_for(train[[0, 250, 999]])  # interpolation hits integer steps
    torch.testing.assert_close(t, torch.tensor([0.0, 250.0, 999.0]), atol=1e-3, rtol=0)
    between = grid.timestep_for((train[400] * train[401]) ** 0.5)  # log-midpoint
    assert float(between) == pytest.approx(400.5, abs=1e-3)


def test_denoised_from_output_recovers_x0() -> None:
    generator = torch.Generator("cpu").manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=generator, dtype=torch.float64)
    eps = torch.randn(3, 4, 8, 8, generator=generator, dtype=torch.float64)
    sigma = torch.tensor([0.1, 1.0, 14.6], dtype=torch.float64)  # (B,)
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * eps  # VE latent
    alpha, sigma_vp = 1 / (1 + s**2) ** 0.5, s / (1 + s**2) ** 0.5  # VP: x_vp = alpha x0 + ...
    v = alpha * eps - sigma_vp * x0  # Salimans & Ho (2022)
    torch.testing.assert_close(denoised_from_output(x, sigma, eps, "epsilon"), x0)
    torch.testing.assert_close(denoised_from_output(x, sigma, v, "v_prediction"), x0)
    torch.testing.assert_close(x * model_input_scale(s), alpha * x0 + sigma_vp * eps)
    torch.testing.assert_close(ve_to_vp(x, s), alpha * x0 + sigma_vp * eps)
    with pytest.raises(ValueError):
        denoised_from_output(x, sigma, v, "sample")


def test_guidance_per_sample() -> None:
    generator = torch.Generator("cpu").manual_seed(0)
    scale = torch.tensor([7.5, 1.0, 0.5, 3.0])
    assert needs_uncond(scale).tolist() == [True, False, False, True]

    def net(x_in, t, context):  # eps depends on input, timestep and context
        return x_in * context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1) / 100

    denoiser = Denoiser(net, "epsilon")
    x = torch.randn(4, 4, 2, 2, generator=generator)
    sigma, t = torch.tensor([0.5, 1.0, 2.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 40.0])
    context, uncond_all = torch.randn(2, 4, 5, 6, generator=generator)  # (B, L, D) each
    uncond_context = uncond_all[[0, 3]]  # only the guided samples' rows
    rows = cfg_rows(x, sigma, t, context, uncond_context, scale)
    assert [r.shape[0] for r in rows[:4]] == [6, 6, 6, 6]  # 4 cond rows + 2 uncond rows
    assert rows[4] is None  # no concatenated channels for a text-to-image model
    cond = denoiser(x, sigma, t, context)
    uncond = denoiser(x, sigma, t, uncond_all)
    guided = guided_denoise(denoiser, x, sigma, t, context, uncond_context, scale)
    torch.testing.assert_close(guided[0], uncond[0] + 7.5 * (cond[0] - uncond[0]))
    torch.testing.assert_close(guided[3], uncond[3] + 3.0 * (cond[3] - uncond[3]))
    assert torch.equal(guided[1:3], cond[1:3])  # cond only, bit for bit
    # guiding D equals guiding eps: D is affine in the network output
    eps_guided = net(x * model_input_scale(sigma).view(-1, 1, 1, 1), t, uncond_all)
    eps_cond = net(x * model_input_scale(sigma).view(-1, 1, 1, 1), t, context)
    eps = eps_guided + 7.5 * (eps_cond - eps_guided)
    torch.testing.assert_close(
        guided[0], denoised_from_output(x[:1], sigma[:1], eps[:1], "epsilon")[0]
    )
    assert torch.equal(cfg_combine(denoiser(*rows), scale), guided)
    with pytest.raises(ValueError, match="2 guided samples but 4 uncond rows"):
        cfg_rows(x, sigma, t, context, uncond_all, scale)
