"""One sample's walk down its sigma grid: the sampler generator, what it asks for, steps done.

The engine keeps one Trajectory per sample and answers every pending (x, sigma) with D(x; sigma)
from a shared batched call; `run_trajectory` answers it alone. Progress counts grid steps, not
denoiser calls, using the registry's evaluations per step (a Heun step makes two calls).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable

import torch

from model.sampling.registry import SamplerEntry
from model.sampling.samplers import NoiseFn
from model.sampling.schedule import SamplingGrid, ve_to_vp


class Trajectory:
    """A sampler generator in flight; `pending` is the (x, sigma) it waits on, None when done."""

    def __init__(
        self,
        entry: SamplerEntry,
        x: torch.Tensor,
        grid: SamplingGrid,
        noise: NoiseFn,
        eta: float | None = None,
    ) -> None:
        self.grid = grid
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
            self.latent = ve_to_vp(stop.value, self.grid.sigmas[-1])


def run_trajectory(
    trajectory: Trajectory, denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Drive one trajectory to the end with ``denoise(x, sigma)``; returns its VP latent."""
    while trajectory.pending is not None:
        trajectory.advance(denoise(*trajectory.pending))
    assert trajectory.latent is not None
    return trajectory.latent
