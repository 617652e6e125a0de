"""The sampler registry: one entry per sampler the API accepts, the only place its facts live.

An entry holds the generator function, whose diffusers grid it runs on, the options it honours,
how many denoiser evaluations each of its steps makes, and the names other tools know it by. The
request schema's enum (jobs/schema.py, torch-free) lists the same keys; a test keeps them equal.
Adding a sampler is one function in samplers.py and one entry here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from model.sampling import samplers
from model.sampling.samplers import NoiseFn, SamplerFn, SamplerGen
from model.sampling.schedule import (
    DDIM_GRID,
    DPM_GRID,
    EULER_GRID,
    SamplingGrid,
    ScheduleConfig,
    sampling_grid,
)

EvaluationCounter = Callable[[torch.Tensor], list[int]]  # sigma grid (S + 1,) -> calls per step


def one_per_step(sigmas: torch.Tensor) -> list[int]:
    """First-order and multistep samplers: one denoiser evaluation per step."""
    return [1] * (len(sigmas) - 1)


def heun_evaluations(sigmas: torch.Tensor) -> list[int]:
    """Heun: two per step, one on a step that ends at sigma 0 (Karras et al. 2022, Alg. 2 l. 8)."""
    return [1 if float(sigma_next) == 0 else 2 for sigma_next in sigmas[1:]]


def plms_evaluations(sigmas: torch.Tensor) -> list[int]:
    """PLMS: a pseudo improved Euler first step (two calls unless it ends at 0), then one each."""
    counts = one_per_step(sigmas)
    if counts and float(sigmas[1]) > 0:
        counts[0] = 2
    return counts


@dataclass(frozen=True)
class SamplerEntry:
    """One sampler: its function, grid, options, evaluations per step, and its other names."""

    name: str  # ours: the request's `sampler`
    function: SamplerFn
    grid_family: str  # whose diffusers timesteps it runs on (schedule.GRID_FAMILIES)
    a1111: str  # AUTOMATIC1111's sampler_name (" Karras" is appended for Karras grids)
    diffusers: str  # the diffusers scheduler class it reproduces
    evaluations: EvaluationCounter = one_per_step
    default_eta: float | None = None  # eta when a request gives none; None: draws no noise
    inputs: frozenset[str] = field(init=False)  # keyword inputs the function accepts

    def __post_init__(self) -> None:
        keywords = inspect.signature(self.function).parameters
        object.__setattr__(self, "inputs", frozenset(list(keywords)[2:]))  # after (x, sigmas)

    @property
    def takes_eta(self) -> bool:
        """Whether the request's eta changes this sampler's output."""
        return "eta" in self.inputs

    def a1111_name(self, karras: bool) -> str:
        """The sampler_name A1111 writes in its infotext for this sampler and grid."""
        return f"{self.a1111} Karras" if karras else self.a1111

    def grid(self, config: ScheduleConfig, steps: int, karras: bool) -> SamplingGrid:
        """This sampler's sigma/timestep grid for a schedule."""
        return sampling_grid(config, self.grid_family, steps, karras)

    def start(
        self, x: torch.Tensor, grid: SamplingGrid, noise: NoiseFn, eta: float | None
    ) -> SamplerGen:
        """Start one sample's generator, passing only the inputs the function takes."""
        available = {
            "noise": noise,
            "eta": self.default_eta if eta is None else eta,
            "sigmas_to": grid.sigmas_to,
        }
        return self.function(x, grid.sigmas, **{name: available[name] for name in self.inputs})


SAMPLERS: dict[str, SamplerEntry] = {
    entry.name: entry
    for entry in (
        SamplerEntry("ddim", samplers.ddim, DDIM_GRID, "DDIM", "DDIMScheduler", default_eta=0.0),
        SamplerEntry(
            "plms", samplers.plms, DDIM_GRID, "PLMS", "PNDMScheduler", evaluations=plms_evaluations
        ),
        SamplerEntry("euler", samplers.euler, EULER_GRID, "Euler", "EulerDiscreteScheduler"),
        SamplerEntry(
            "euler_a",
            samplers.euler_a,
            EULER_GRID,
            "Euler a",
            "EulerAncestralDiscreteScheduler",
            default_eta=1.0,
        ),
        SamplerEntry(
            "heun",
            samplers.heun,
            EULER_GRID,
            "Heun",
            "HeunDiscreteScheduler",
            evaluations=heun_evaluations,
        ),
        SamplerEntry(
            "dpmpp_2m", samplers.dpmpp_2m, DPM_GRID, "DPM++ 2M", "DPMSolverMultistepScheduler"
        ),
    )
}


DEFAULT_SAMPLER = SAMPLERS["ddim"].name  # what a request that names none gets (the schema agrees)


def sampler_entry(name: str) -> SamplerEntry:
    """The registry entry of a sampler name (ValueError naming the known ones)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}") from None
