"""Samplers as generators: each ``denoised = yield x, sigma`` asks the caller for D(x; sigma).

x is one sample's VE latent (x = x0 + sigma * eps), sigmas a (steps + 1,) float32 grid from
`schedule.sampling_grid`, and `noise()` draws N(0, I) shaped like x from that sample's own
torch.Generator. All per-sample state lives in the generator's locals, so an engine can advance many
samples (different samplers, step counts, seeds) with one batched network call per step.
"""

from __future__ import annotations

from collections.abc import Callable, Generator

import torch

NoiseFn = Callable[[], torch.Tensor]
SamplerGen = Generator[tuple[torch.Tensor, torch.Tensor], torch.Tensor, torch.Tensor]
SamplerFn = Callable[..., SamplerGen]


def ancestral_step(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Splits a step into (sigma_down, sigma_up): deterministic target and fresh-noise std."""
    if eta <= 0:
        return sigma_to, torch.zeros_like(sigma_to)
    # Song et al. (2021), Eq. 16 in VE form: up^2 = eta^2 to^2 (from^2 - to^2) / from^2
    sigma_up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def ddim(
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise: NoiseFn,
    eta: float = 0.0,
    sigmas_to: torch.Tensor | None = None,
) -> SamplerGen:
    """Implements DDIM (Song et al. 2021, Eq. 12) in sigma space; eta = 0 is exactly Euler."""
    targets = sigmas[1:] if sigmas_to is None else sigmas_to  # (steps,)
    for i in range(len(sigmas) - 1):
        sigma, target = sigmas[i], targets[i]
        denoised = yield x, sigma
        # 1. Split the target noise level into a deterministic part and fresh noise.
        sigma_down, sigma_up = ancestral_step(sigma, target, eta)
        # 2. x = D + sigma_down * eps with eps = (x - D) / sigma (Euler to sigma_down; this form
        #    avoids cancelling against a huge x at sigma_max, e.g. 2e4 for the cosine schedule).
        x = denoised + (x - denoised) * (sigma_down / sigma)
        # 3. Add fresh noise (diffusers' DDIMScheduler draws it on every step when eta > 0).
        if eta > 0:
            x = x + noise() * sigma_up
        # 4. diffusers' DDIM steps to t - T // steps, which is not the next grid timestep for
        #    linspace/trailing spacing; its VP latent is then read at the next grid sigma.
        if sigmas_to is not None:
            x = x * ((1 + sigmas[i + 1] ** 2) / (1 + target**2)) ** 0.5
    return x


def plms(x: torch.Tensor, sigmas: torch.Tensor) -> SamplerGen:
    """Implements PLMS (Liu et al. 2022) as in CompVis ``ldm/models/diffusion/plms.py``."""
    old_eps: list[torch.Tensor] = []  # eps = (x - D) / sigma, the VE ODE derivative
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = yield x, sigma
        eps = (x - denoised) / sigma
        if not old_eps and sigma_next > 0:
            # 1. Pseudo improved Euler (2nd order): average eps at both ends of an Euler step.
            x_next = x + eps * (sigma_next - sigma)
            denoised_next = yield x_next, sigma_next
            eps_prime = (eps + (x_next - denoised_next) / sigma_next) / 2
        elif not old_eps:
            eps_prime = eps  # a one-step grid ending at sigma 0 has no second evaluation point
        elif len(old_eps) == 1:
            # 2. Adams-Bashforth 2nd order on eps.
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            # 3. Adams-Bashforth 3rd order.
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            # 4. Adams-Bashforth 4th order.
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        old_eps = [*old_eps[-2:], eps]
        # DDIM (eta = 0) update with eps_prime: x0' + sigma_next * eps_prime.
        x = x + eps_prime * (sigma_next - sigma)
    return x


def euler(x: torch.Tensor, sigmas: torch.Tensor) -> SamplerGen:
    """Implements Algorithm 2 (Euler steps) from Karras et al. (2022)."""
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def euler_a(
    x: torch.Tensor, sigmas: torch.Tensor, *, noise: NoiseFn, eta: float = 1.0
) -> SamplerGen:
    """Ancestral Euler steps (k-diffusion ``sample_euler_ancestral``); eta 0 is plain Euler."""
    for i in range(len(sigmas) - 1):
        denoised = yield x, sigmas[i]
        # 1. Deterministic Euler step down to sigma_down.
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigma_down - sigmas[i])
        # 2. Fresh noise back up to sigmas[i + 1].
        if sigmas[i + 1] > 0 and eta > 0:
            x = x + noise() * sigma_up
    return x


def heun(x: torch.Tensor, sigmas: torch.Tensor) -> SamplerGen:
    """Implements Algorithm 2 (Heun steps) from Karras et al. (2022)."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = yield x, sigma
        # 1. Euler step (the last step, to sigma 0, stops here: Alg. 2 line 8).
        d = (x - denoised) / sigma
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        # 2. Second-order correction with the slope at the Euler point.
        denoised_2 = yield x_2, sigma_next
        d_2 = (x_2 - denoised_2) / sigma_next
        x = x + (d + d_2) / 2 * dt
    return x


def dpmpp_2m(x: torch.Tensor, sigmas: torch.Tensor) -> SamplerGen:
    """Implements DPM-Solver++(2M) from Lu et al. (2022) (k-diffusion ``sample_dpmpp_2m``)."""
    old_denoised: torch.Tensor | None = None
    h_last: torch.Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = yield x, sigma
        if sigma_next == 0:
            # 1. Final step to sigma 0 is first order: x = D.
            x = denoised
            continue
        h = sigma.log() - sigma_next.log()  # lambda = -log(sigma)
        if old_denoised is None or h_last is None:
            # 2. First step: DPM-Solver++(1), i.e. DDIM.
            denoised_d = denoised
        else:
            # 3. Multistep: linear extrapolation of D in lambda (Lu et al. 2022, Alg. 2).
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (sigma_next / sigma) * x - torch.expm1(-h) * denoised_d
        old_denoised, h_last = denoised, h
    return x
