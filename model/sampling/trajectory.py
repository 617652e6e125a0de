"""One sample's walk down its sigma grid: the sampler generator, what it asks for, steps done.

The engine keeps one Trajectory per sample and answers every pending (x, sigma) with D(x; sigma)
from a shared batched call; `run_trajectory` answers it alone. Progress counts grid steps, not
denoiser calls, using the registry's evaluations per step (a Heun step makes two calls).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from model.sampling.registry import SamplerEntry
from model.sampling.samplers import NoiseFn
from model.sampling.schedule import SamplingGrid, ve_to_vp


@dataclass(frozen=True)
class KnownRegion:
    """What inpainting keeps: latent z0 where `mask` is 0, noised with `noise` between steps."""

    z0: torch.Tensor  # (1, C, h, w) scaled clean latent of the init image
    noise: torch.Tensor  # (1, C, h, w) the sample's initial noise
    mask: torch.Tensor  # (1, 1, h, w) 1 = repaint, 0 = keep

    def impose(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """VE latent x at noise level sigma with the known region replaced: z0 + sigma * noise."""
        return self.mask * x + (1 - self.mask) * (self.z0 + sigma * self.noise)

    def finish(self, latent: torch.Tensor) -> torch.Tensor:
        """The final VP latent with the clean z0 in the known region."""
        return self.mask * latent + (1 - self.mask) * self.z0


class Trajectory:
    """A sampler generator in flight; `pending` is the (x, sigma) it waits on, None when done."""

    def __init__(
        self,
        entry: SamplerEntry,
        x: torch.Tensor,
        grid: SamplingGrid,
        noise: NoiseFn,
        eta: float | None = None,
        known: KnownRegion | None = None,
    ) -> None:
        self.grid = grid
        self.known = known  # inpainting without an inpainting model: re-imposed between steps
        self.generator = entry.start(x, grid, noise, eta)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = next(self.generator)
        # evaluations made once each step is complete, e.g. heun [2, 4, ..., 2S - 1]
        self.step_ends = list(itertools.accumulate(entry.evaluations(grid.sigmas)))
        self.evaluations = 0
        self.latent: torch.Tensor | None = None  # (1, C, h, w) VP latent once finished

    @property
    def done(self) -> bool:
        return self.latent is not None

    @property
    def total_steps(self) -> int:
        return self.grid.steps

    @property
    def steps_done(self) -> int:
        """Grid steps whose every evaluation has been answered (total_steps only when done)."""
        if self.done:
            return self.total_steps
        return min(bisect.bisect_right(self.step_ends, self.evaluations), self.total_steps - 1)

    def advance(self, denoised: torch.Tensor) -> None:
        """Answer the pending request with D(x; sigma); record the VP latent when it returns."""
        self.evaluations += 1
        try:
            self.pending = self.generator.send(denoised)
        except StopIteration as stop:
            self.pending = None
            latent = ve_to_vp(stop.value, self.grid.sigmas[-1])
            self.latent = self.known.finish(latent) if self.known is not None else latent
            return
        if self.known is not None and self.evaluations in self.step_ends:
            # A step ended: the x the sampler yields is its own state, so re-imposing the known
            # region on it in place is what diffusers does to its latents after scheduler.step.
            x, sigma = self.pending
            x.copy_(self.known.impose(x, sigma))


def run_trajectory(
    trajectory: Trajectory, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Drive one trajectory to the end with ``denoise(x, sigma)``; returns its VP latent."""
    while trajectory.pending is not None:
        trajectory.advance(denoise(*trajectory.pending))
    assert trajectory.latent is not None
    return trajectory.latent
