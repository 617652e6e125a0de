"""Continuous batching at the step level: many samples, one batched UNet forward per step.

Each sample is a sampler generator (model/sampling/samplers.py) with its own grid, guidance scale,
text context and torch.Generator; between steps samples can join or leave. Classifier-free guidance
puts a sample's uncond and cond rows in the same forward (Ho & Salimans, 2022).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from model.sampling.denoiser import denoised_from_output, model_input_scale
from model.sampling.samplers import SAMPLERS
from model.sampling.schedule import SamplingGrid, sampling_grid, ve_to_vp

if TYPE_CHECKING:
    from model.pipeline import Pipeline


@dataclass(frozen=True)
class SampleSpec:
    """Everything that determines one image."""

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    sampler: str = "ddim"
    eta: float = 0.0
    karras: bool = False


class SampleHandle:
    """One sample in flight: its sampler generator, pending (x, sigma) request and progress."""

    def __init__(
        self,
        spec: SampleSpec,
        tag: Hashable,
        grid: SamplingGrid,
        x: torch.Tensor,
        noise: Any,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        total: int,
    ) -> None:
        self.spec, self.tag, self.grid = spec, tag, grid
        self.cond, self.uncond = cond, uncond  # (1, S, D) each
        options = dict(grid.sampler_kwargs, eta=spec.eta)
        self.generator = SAMPLERS[spec.sampler](x, grid.sigmas, noise=noise, **options)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = next(self.generator)
        self.steps_done = 0
        self.total_steps = total
        self.latent: torch.Tensor | None = None  # (1, C, h, w) VP latent once finished

    @property
    def done(self) -> bool:
        return self.latent is not None

    def group_key(self) -> tuple:
        """Samples batch together when latent shape and context length agree."""
        assert self.pending is not None
        return (tuple(self.pending[0].shape), self.cond.shape[1])

    def advance(self, denoised: torch.Tensor) -> None:
        """Send D(x; sigma) to the sampler; record the final latent when it returns."""
        self.steps_done += 1
        try:
            self.pending = self.generator.send(denoised)
        except StopIteration as stop:
            self.pending = None
            self.latent = ve_to_vp(stop.value, self.grid.sigmas[-1])


def count_evaluations(sampler: str, grid: SamplingGrid, eta: float) -> int:
    """Denoiser calls a sampler makes on a grid (dry run on a scalar; exact for progress)."""
    x = torch.zeros(1, 1, 1, 1)
    gen = SAMPLERS[sampler](
        x, grid.sigmas, noise=lambda: torch.zeros_like(x), **dict(grid.sampler_kwargs, eta=eta)
    )
    calls = 0
    try:
        item = next(gen)
        while True:
            calls += 1
            item = gen.send(item[0])
    except StopIteration:
        return calls


class BatchEngine:
    """Drives many samples through shared UNet forwards, admitting and retiring between steps."""

    def __init__(self, pipeline: Pipeline, max_batch: int = 8) -> None:
        self.pipeline = pipeline
        self.max_batch = max_batch
        self.active: list[SampleHandle] = []

    def __len__(self) -> int:
        return len(self.active)

    def add(self, spec: SampleSpec, tag: Hashable = None) -> SampleHandle:
        """Admit a sample: encode its prompts, draw its initial latent from its own generator."""
        p = self.pipeline
        if spec.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {spec.sampler!r}")
        f = p.components.vae.config.downsampling_factor
        if spec.width % f or spec.height % f:
            raise ValueError(f"width and height must be multiples of {f}")
        grid = sampling_grid(p.components.schedule, spec.sampler, spec.steps, spec.karras)
        generator = torch.Generator("cpu").manual_seed(spec.seed)
        shape = (1, p.components.unet.config.in_channels, spec.height // f, spec.width // f)
        x = torch.randn(shape, generator=generator, dtype=torch.float32)  # (1, C, h, w)
        x = (x * grid.init_noise_scale).to(p.device)

        def noise() -> torch.Tensor:
            return torch.randn(shape, generator=generator, dtype=torch.float32).to(p.device)

        if spec.guidance_scale > 1.0:
            cond, uncond = p.conditioner.encode_pair(spec.prompt, spec.negative_prompt)
        else:
            cond, uncond = p.conditioner.encode(spec.prompt), None
        total = count_evaluations(spec.sampler, grid, spec.eta)
        handle = SampleHandle(spec, tag, grid, x, noise, cond, uncond, total)
        self.active.append(handle)
        return handle

    def remove(self, handle: SampleHandle) -> None:
        """Drop a sample between steps (cancellation, failure)."""
        if handle in self.active:
            self.active.remove(handle)

    @torch.inference_mode()
    def step(self, handles: list[SampleHandle] | None = None) -> list[SampleHandle]:
        """One UNet forward per (shape, context) group of pending samples; returns finished ones."""
        chosen = [h for h in (self.active if handles is None else handles) if h.pending]
        groups: dict[tuple, list[SampleHandle]] = defaultdict(list)
        for handle in chosen:
            groups[handle.group_key()].append(handle)
        for group in groups.values():
            self._forward(group)
        finished = [h for h in chosen if h.done]
        for handle in finished:
            self.remove(handle)
        return finished

    def _forward(self, group: list[SampleHandle]) -> None:
        """Batched denoiser evaluation with CFG rows: [uncond rows..., cond rows...]."""
        p = self.pipeline
        unet = p.components.unet
        x = torch.cat([h.pending[0] for h in group])  # (B, C, h, w)
        sigma = torch.stack([h.pending[1] for h in group]).to(x.device, torch.float32)  # (B,)
        t = torch.cat([h.grid.timestep_for(h.pending[1]).reshape(1) for h in group])  # (B,)
        guided = [i for i, h in enumerate(group) if h.uncond is not None]
        x_in = x * model_input_scale(sigma).view(-1, 1, 1, 1)
        rows = torch.cat([x_in[guided], x_in])  # (G + B, C, h, w)
        times = torch.cat([t[guided], t]).to(x.device)
        context = torch.cat([group[i].uncond for i in guided] + [h.cond for h in group])
        out = forward_at_least_two(unet, rows.to(p.dtype), times, context).float()  # (G + B, ...)
        uncond_out, cond_out = out[: len(guided)], out[len(guided) :]
        scale = torch.tensor([group[i].spec.guidance_scale for i in guided], device=x.device)
        if guided:
            u = uncond_out
            c = cond_out[guided]
            cond_out = cond_out.clone()
            cond_out[guided] = u + scale.view(-1, 1, 1, 1) * (c - u)
        prediction = p.components.schedule.prediction_type
        denoised = denoised_from_output(x, sigma.view(-1, 1, 1, 1), cond_out, prediction)
        for i, handle in enumerate(group):
            handle.advance(denoised[i : i + 1])

    @torch.inference_mode()
    def decode(self, handles: list[SampleHandle]) -> list[Image.Image]:
        """VAE-decode finished samples (batched per size) to RGB images; NaN raises ValueError."""
        images: dict[int, Image.Image] = {}
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, handle in enumerate(handles):
            assert handle.latent is not None, "decode() takes finished samples"
            by_shape[tuple(handle.latent.shape)].append(i)
        for indices in by_shape.values():
            latents = torch.cat([handles[i].latent for i in indices])
            for i, array in zip(indices, self.pipeline.decode_latents(latents), strict=True):
                images[i] = Image.fromarray(array)
        return [images[i] for i in range(len(handles))]


def forward_at_least_two(
    unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """UNet forward that never runs a single row: CPU conv kernels differ at batch 1 only, so
    duplicating a lone row keeps every image bit-identical whatever shares its batch."""
    if len(x) > 1:
        return unet(x, t, context)
    return unet(x.repeat(2, 1, 1, 1), t.repeat(2), context.repeat(2, 1, 1))[:1]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, as diffusers' postprocess rounds."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
