"""model/sampling against analytic solutions, plus per-sample independence and the small pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.sampling.denoiser import (
    NetworkDenoiser,
    denoised_from_output,
    model_input_scale,
)
from model.sampling.guidance import (
    GuidedNetwork,
    apply_guidance,
    combine_guided,
    guided_batch,
    needs_uncond,
)
from model.sampling.samplers import SAMPLERS, run_sampler
from model.sampling.schedule import (
    ScheduleConfig,
    karras_sigmas,
    sampling_grid,
    training_sigmas,
    ve_to_vp,
)

DATA_STD = 1.0  # s: the data distribution is N(0, s^2 I)
DETERMINISTIC = ("euler", "heun", "dpmpp_2m", "plms", "ddim")


def ideal_denoiser(s: float):
    """E[x0 | x] for x0 ~ N(0, s^2), x = x0 + sigma * eps."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return x * s**2 / (s**2 + sigma**2)

    return denoise


def karras_grid(steps: int) -> torch.Tensor:
    sigmas = karras_sigmas(0.002, 80.0, steps)  # Karras et al. (2022) EDM range
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


def ode_error(sampler: str, sigmas: torch.Tensor, **opts) -> float:
    """Max relative error against the exact probability-flow ODE solution."""
    generator = torch.Generator("cpu").manual_seed(0)
    x_t = torch.randn(512, 16, generator=generator) * sigmas[0]  # 512 samples, d = 16
    s2 = DATA_STD**2
    exact = x_t * ((s2 + sigmas[-1] ** 2) / (s2 + sigmas[0] ** 2)) ** 0.5
    out = run_sampler(SAMPLERS[sampler], x_t, sigmas, ideal_denoiser(DATA_STD), None, **opts)
    return float((out - exact).abs().max() / exact.abs().max())


def test_registry() -> None:
    assert set(SAMPLERS) == {"ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m"}


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
    grid = sampling_grid(ScheduleConfig(), sampler, 50)
    assert grid.sigmas[-1] == training_sigmas(ScheduleConfig())[0] > 0
    limit = 0.05 if sampler == "ddim" else 0.005  # first order vs 4th-order multistep
    assert ode_error(sampler, grid.sigmas, **grid.sampler_kwargs) < limit


def test_ddim_eta0_is_euler_and_linspace_target_quirk() -> None:
    grid = sampling_grid(ScheduleConfig(), "ddim", 20)
    assert grid.sampler_kwargs == {}  # leading spacing: DDIM's t - T // n is the next grid t
    euler_error = ode_error("euler", grid.sigmas)
    assert ode_error("ddim", grid.sigmas) == pytest.approx(euler_error, rel=1e-4)
    linspace = sampling_grid(ScheduleConfig(timestep_spacing="linspace"), "ddim", 20)
    assert not torch.equal(linspace.sampler_kwargs["sigmas_to"][:-1], linspace.sigmas[1:-1])


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


@pytest.mark.parametrize(("sampler", "eta"), [("euler_a", 1.0), ("ddim", 0.5), ("ddim", 1.0)])
@pytest.mark.parametrize("s", (0.5, 1.0))
def test_ancestral_samplers_reach_data_std(sampler: str, eta: float, s: float) -> None:
    errors = []
    for steps, karras in ((30, False), (200, True)):
        grid = sampling_grid(ScheduleConfig(), sampler, steps, karras=karras)
        assert grid.sampler_kwargs == {}
        generator = torch.Generator("cpu").manual_seed(1)
        shape = (8192, 4)
        x_t = torch.randn(shape, generator=generator) * grid.sigmas[0]
        deterministic = x_t * s / (s**2 + grid.sigmas[0] ** 2) ** 0.5
        out = run_sampler(
            SAMPLERS[sampler],
            x_t,
            grid.sigmas,
            ideal_denoiser(s),
            lambda shape=shape, generator=generator: torch.randn(shape, generator=generator),
            eta=eta,
        )
        std = float(out.std())
        # The step-by-step variance the update rule implies, to sampling error (~0.8% here).
        assert std == pytest.approx(variance_recursion(grid.sigmas, eta, s), rel=0.025)
        # Fresh noise was injected: the output is not the ODE solution from the same x_T.
        correlation = torch.corrcoef(torch.stack([out.flatten(), deterministic.flatten()]))[0, 1]
        assert correlation < 0.9
        errors.append(abs(std - s) / s)
    assert errors[1] < 0.03  # many small steps: std ~= s
    assert errors[1] < errors[0]


def fake_net(x_in: torch.Tensor, t: torch.Tensor, context: object = None) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return 0.1 * x_in + 0.05 * t / 1000 + 0.05 * torch.sin(3 * x_in)


def toy_engine(requests: list[dict], config: ScheduleConfig) -> list[torch.Tensor]:
    """Drive several samplers in lockstep, one batched network call per round."""
    pending, gens, grids, results = {}, {}, {}, {}
    for i, request in enumerate(requests):
        grid = sampling_grid(config, request["sampler"], request["steps"], request["karras"])
        generator = torch.Generator("cpu").manual_seed(request["seed"])
        x = torch.randn(1, 4, 8, 8, generator=generator) * grid.init_noise_scale

        def noise(generator: torch.Generator = generator) -> torch.Tensor:
            return torch.randn(1, 4, 8, 8, generator=generator)

        opts = dict(grid.sampler_kwargs, eta=request["eta"])
        gens[i] = SAMPLERS[request["sampler"]](x, grid.sigmas, noise=noise, **opts)
        grids[i], pending[i] = grid, next(gens[i])
    while pending:
        order = sorted(pending)
        x = torch.cat([pending[i][0] for i in order])  # (B, C, h, w)
        sigma = torch.stack([pending[i][1] for i in order])  # (B,)
        t = torch.cat([grids[i].timestep_for(pending[i][1]).reshape(1) for i in order])  # (B,)
        x_in = x * model_input_scale(sigma).view(-1, 1, 1, 1)
        denoised = denoised_from_output(x, sigma, fake_net(x_in, t), config.prediction_type)
        for row, i in enumerate(order):
            try:
                pending[i] = gens[i].send(denoised[row : row + 1])
            except StopIteration as stop:
                results[i] = ve_to_vp(stop.value, grids[i].sigmas[-1])
                del pending[i]
    return [results[i] for i in range(len(requests))]


def test_samples_are_independent_of_their_batch() -> None:
    config = ScheduleConfig(prediction_type="v_prediction", timestep_spacing="linspace")
    requests = [
        {"sampler": "euler_a", "steps": 9, "seed": 1, "eta": 0.0, "karras": False},
        {"sampler": "ddim", "steps": 7, "seed": 2, "eta": 0.7, "karras": False},
        {"sampler": "heun", "steps": 5, "seed": 3, "eta": 0.0, "karras": True},
        {"sampler": "dpmpp_2m", "steps": 12, "seed": 4, "eta": 0.0, "karras": False},
        {"sampler": "plms", "steps": 6, "seed": 5, "eta": 0.0, "karras": False},
        {"sampler": "euler", "steps": 4, "seed": 1, "eta": 0.0, "karras": False},
    ]
    together = toy_engine(requests, config)
    for request, result in zip(requests, together, strict=True):
        (alone,) = toy_engine([request], config)
        assert torch.equal(result, alone), request
    # ...and the batched result is the simple one-sample path.
    grid = sampling_grid(config, "ddim", 7)
    generator = torch.Generator("cpu").manual_seed(2)
    x = torch.randn(1, 4, 8, 8, generator=generator) * grid.init_noise_scale
    denoiser = NetworkDenoiser(fake_net, grid, config.prediction_type)
    out = run_sampler(
        SAMPLERS["ddim"],
        x,
        grid.sigmas,
        denoiser,
        lambda: torch.randn(1, 4, 8, 8, generator=generator),
        eta=0.7,
        **grid.sampler_kwargs,
    )
    torch.testing.assert_close(ve_to_vp(out, grid.sigmas[-1]), together[1], rtol=0, atol=1e-6)


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
    with pytest.raises(ValueError, match="unknown sampler"):
        sampling_grid(ScheduleConfig(), "lms", 10)


def test_grid_timestep_lookup() -> None:
    config = ScheduleConfig()
    grid = sampling_grid(config, "euler", 10, karras=True)
    assert grid.steps == 10 and grid.sigmas.shape == (11,) and grid.sigmas[-1] == 0
    assert torch.equal(grid.timestep_for(grid.sigmas[:-1]), grid.timesteps)  # exact
    assert grid.timestep_for(grid.sigmas[3]).shape == ()
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
    cond, uncond = torch.randn(2, 3, 4, 2, 2, generator=generator)  # (B=3, C, h, w) each
    scale = torch.tensor([7.5, 1.0, 0.5])
    assert needs_uncond(scale).tolist() == [True, False, False]
    assert needs_uncond(1.5) and not needs_uncond(1.0)
    guided = apply_guidance(cond, uncond, scale)
    torch.testing.assert_close(guided[0], uncond[0] + 7.5 * (cond[0] - uncond[0]))
    assert torch.equal(guided[1:], cond[1:])  # cond only, bit for bit

    def net(x_in, t, context):
        return x_in * context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + t.view(-1, 1, 1, 1)

    x_in, t = torch.randn(3, 4, 2, 2, generator=generator), torch.tensor([10.0, 20.0, 30.0])
    context, uncond_context = torch.randn(2, 3, 5, 6, generator=generator)  # (B, L, D) each
    rows = guided_batch(x_in, t, context, uncond_context, scale)
    assert [r.shape[0] for r in rows] == [4, 4, 4]  # 3 cond rows + 1 uncond row
    expected = apply_guidance(net(x_in, t, context), net(x_in, t, uncond_context), scale)
    torch.testing.assert_close(combine_guided(net(*rows), scale), expected)
    guided_net = GuidedNetwork(net, uncond_context, scale)
    torch.testing.assert_close(guided_net(x_in, t, context), expected)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_handles_tiny_step_counts(sampler: str) -> None:
    evaluations = {"heun": [1, 3], "plms": [2, 3]}.get(sampler, [1, 2])  # denoiser calls
    for config in (ScheduleConfig(), ScheduleConfig(set_alpha_to_one=True)):
        for steps, expected_calls in zip((1, 2), evaluations, strict=True):
            for karras in (False, True):
                grid = sampling_grid(config, sampler, steps, karras=karras)
                calls = []

                def denoise(x, sigma, calls=calls):
                    calls.append(float(sigma))
                    return ideal_denoiser(DATA_STD)(x, sigma)

                x = torch.ones(1, 4, 2, 2) * grid.sigmas[0]
                out = run_sampler(
                    SAMPLERS[sampler], x, grid.sigmas, denoise, lambda: torch.zeros(1, 4, 2, 2)
                )
                assert torch.isfinite(out).all()
                if sampler == "plms" and steps == 1 and grid.sigmas[-1] == 0:
                    expected_calls = 1  # no second point at sigma 0: plain Euler
                assert len(calls) == expected_calls, (sampler, steps, karras, calls)
