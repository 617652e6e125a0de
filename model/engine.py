"""Continuous batching at the step level: many samples, one guided denoiser call per group.

Each sample is a Trajectory (model/sampling/trajectory.py) with its own grid, sampler, guidance
scale, text context and torch.Generator; between steps samples can join or leave. `step()` is the
seam where per-sample inputs meet the shared call: rows are grouped by what must agree to share a
UNet forward (latent shape, context length), then the one Denoiser and the one CFG guider run.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from model.class_embedder import ClassConditioner
from model.image_inputs import binary_mask, starting_point, upscale_start
from model.pipeline import Pipeline
from model.sampling.denoiser import Denoiser
from model.sampling.guidance import guided_denoise
from model.sampling.registry import DEFAULT_SAMPLER, sampler_entry
from model.sampling.trajectory import Trajectory


@dataclass(frozen=True)
class SampleSpec:
    """Everything that determines one image; models without text (unconditional, LDM-SR) read
    neither the prompts nor the guidance scale; class-conditional ones read `class_label`, and
    the guidance scale where they have a null class."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    width: int = 512
    height: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    sampler: str = DEFAULT_SAMPLER
    eta: float | None = None  # None: the sampler's default (registry)
    karras: bool = False
    # Image-to-image (SDEdit): start from this image noised to the step `strength` selects,
    # running steps x strength of the schedule (as diffusers' img2img pipeline).
    init_image: Image.Image | None = field(default=None, compare=False)
    strength: float = 1.0
    # Inpainting: white (or transparent) pixels of the mask are repainted, the rest kept.
    mask_image: Image.Image | None = field(default=None, compare=False)
    # Inpainting: paste the init image's unmasked pixels over the decoded result (A1111's
    # overlay), so the kept area is exact instead of a VAE round trip; diffusers does not.
    keep_unmasked: bool = False
    # Upscaling: the low-res input, width x height / f x f. The x4 upscaler noise-augments it to
    # `noise_level` (a training step of its own schedule) before it conditions the UNet; LDM-SR
    # reads it as is.
    low_res_image: Image.Image | None = field(default=None, compare=False)
    noise_level: int = 20
    class_label: int | None = None

    def first_step(self) -> int:
        """Index of the grid step sampling starts at (0 for text-to-image)."""
        if self.init_image is None:
            return 0
        run = min(int(self.steps * self.strength), self.steps)  # diffusers' get_timesteps
        if run < 1:
            raise ValueError(f"strength {self.strength} x steps {self.steps} runs no step")
        return self.steps - run


class Sample:
    """One image in flight: its spec, caller's tag, text contexts and trajectory."""

    def __init__(
        self,
        spec: SampleSpec,
        tag: Hashable,
        trajectory: Trajectory,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        concat: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> None:
        self.spec, self.tag, self.trajectory = spec, tag, trajectory
        self.cond, self.uncond = cond, uncond  # (1, L, D) each; uncond only when guided
        self.concat = concat  # (1, C', h, w) beside x on every call (inpainting, upscaling)
        self.labels = labels  # (1,) class label of class-conditional UNets (upscaler noise level)
        self.text_tokens = 0  # prompt (and negative prompt, when guided) tokens encoded

    @property
    def done(self) -> bool:
        return self.trajectory.done

    @property
    def guidance_scale(self) -> float:
        """The scale guidance applies: 1 (none) for a sample without an unconditional row."""
        return self.spec.guidance_scale if self.uncond is not None else 1.0

    @property
    def latent(self) -> torch.Tensor | None:
        """(1, C, h, w) VP latent once finished."""
        return self.trajectory.latent

    @property
    def steps_done(self) -> int:
        return self.trajectory.steps_done

    @property
    def total_steps(self) -> int:
        return self.trajectory.total_steps

    @property
    def pending(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x (1, C, h, w), sigma) this unfinished sample waits on."""
        assert self.trajectory.pending is not None, "finished samples wait on nothing"
        return self.trajectory.pending

    def group_key(self) -> tuple:
        """Samples share a forward when latent shape and context length agree."""
        return (tuple(self.pending[0].shape), self.cond.shape[1])


class BatchEngine:
    """Drives many samples through shared denoiser calls, admitting and retiring between steps."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.denoiser = Denoiser(pipeline.network, pipeline.prediction_type)
        self.active: list[Sample] = []

    def __len__(self) -> int:
        return len(self.active)

    def add(self, spec: SampleSpec, tag: Hashable = None) -> Sample:
        """Admit a sample: encode its prompts, draw its initial latent from its own generator."""
        p = self.pipeline
        entry = sampler_entry(spec.sampler)
        f = p.downsampling_factor
        if spec.width % f or spec.height % f:
            raise ValueError(f"width and height must be multiples of {f}")
        grid = entry.grid(p.components.schedule, spec.steps, spec.karras).tail(spec.first_step())
        generator = torch.Generator("cpu").manual_seed(spec.seed)
        shape = (1, p.latent_channels, spec.height // f, spec.width // f)

        def noise() -> torch.Tensor:
            return torch.randn(shape, generator=generator, dtype=torch.float32).to(p.device)

        size = (spec.width, spec.height)
        if spec.init_image is not None and spec.init_image.size != size:
            raise ValueError(f"init image is {spec.init_image.size}, expected {size}")
        if spec.mask_image is not None and spec.init_image is None:
            raise ValueError("a mask needs an init image")
        if "upscale" in p.tasks or spec.low_res_image is not None:
            low = spec.low_res_image
            if low is not None and (low.width * f, low.height * f) != size:
                raise ValueError(f"low-res image is {low.size}, expected {f}x smaller than {size}")
            start = upscale_start(p, grid, noise, generator, low, spec.noise_level)
        else:
            start = starting_point(p, grid, noise, generator, spec.init_image, spec.mask_image,
                                   full_strength=spec.strength >= 1.0)  # fmt: skip

        cond, uncond = self._contexts(spec)
        trajectory = Trajectory(entry, start.x, grid, noise, spec.eta, start.known)
        sample = Sample(spec, tag, trajectory, cond, uncond, start.concat, start.labels)
        sample.text_tokens = p.conditioner.token_count(spec.prompt) + (
            p.conditioner.token_count(spec.negative_prompt) if uncond is not None else 0
        )
        self.active.append(sample)
        return sample

    def _contexts(self, spec: SampleSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond) contexts (1, L, D); uncond is None when the sample runs unguided."""
        p, conditioner = self.pipeline, self.pipeline.conditioner
        guided = spec.guidance_scale > 1.0 and p.guidable
        if isinstance(conditioner, ClassConditioner):
            if spec.class_label is None:
                raise ValueError("this model is class-conditional: give a class_label")
            cond = conditioner.encode_label(spec.class_label)
            return cond, conditioner.encode_null() if guided else None
        if spec.class_label is not None:
            raise ValueError("this model is not class-conditional: class_label does not apply")
        if guided:
            return conditioner.encode_pair(spec.prompt, spec.negative_prompt)
        return conditioner.encode(spec.prompt), None

    def remove(self, sample: Sample) -> None:
        """Drop a sample between steps (cancellation, failure)."""
        if sample in self.active:
            self.active.remove(sample)

    def groups(self) -> dict[tuple, list[Sample]]:
        """Samples by what must agree to share a UNet forward: latent shape, context length."""
        groups: dict[tuple, list[Sample]] = defaultdict(list)
        for sample in self.active:
            groups[sample.group_key()].append(sample)
        return dict(groups)

    def step_costs(self) -> dict[tuple, int]:
        """Work of one step of each group: UNet rows (CFG doubles a row) x latent pixels."""
        costs = {}
        for key, group in self.groups().items():
            rows = sum(2 if sample.uncond is not None else 1 for sample in group)
            costs[key] = rows * group[0].pending[0].shape[-1] * group[0].pending[0].shape[-2]
        return costs

    @torch.inference_mode()
    def step(self, key: tuple | None = None) -> list[Sample]:
        """One guided denoiser call for group `key` (every group when None); returns the samples
        that finished."""
        groups = self.groups()
        for group_key, group in groups.items():
            if key is None or group_key == key:
                self._denoise(group)
        finished = [sample for sample in self.active if sample.done]
        for sample in finished:
            self.remove(sample)
        return finished

    def _denoise(self, group: list[Sample]) -> None:
        """Answer every sample's pending (x, sigma) with its guided D(x; sigma)."""
        pending = [sample.pending for sample in group]
        x = torch.cat([x_i for x_i, _ in pending])  # (B, C, h, w)
        sigma = torch.stack([sigma_i for _, sigma_i in pending]).to(x.device)  # (B,)
        t = torch.cat(
            [
                s.trajectory.grid.timestep_for(sigma_i).reshape(1)
                for s, (_, sigma_i) in zip(group, pending, strict=True)
            ]
        )  # (B,) each sample's own grid timestep
        scale = torch.tensor([s.guidance_scale for s in group])  # (B,)
        context = torch.cat([s.cond for s in group])  # (B, L, D)
        uncond_context = torch.cat(
            [context[:0], *(s.uncond for s in group if s.uncond is not None)]
        )  # (U, L, D)
        concats = [s.concat for s in group if s.concat is not None]
        concat = torch.cat(concats) if concats else None  # (B, C', h, w): all or none (model)
        labels = [s.labels for s in group if s.labels is not None]
        label = torch.cat(labels) if labels else None  # (B,): all or none (the model decides)
        denoised = guided_denoise(
            self.denoiser, x, sigma, t, context, uncond_context, scale, concat, label
        )
        for i, sample in enumerate(group):
            sample.trajectory.advance(denoised[i : i + 1])

    @torch.inference_mode()
    def decode(self, samples: list[Sample]) -> list[Image.Image]:
        """Finished samples -> RGB images, VAE-decoded per size; NaN raises NonFiniteOutput."""
        images: dict[int, Image.Image] = {}
        by_shape: dict[tuple, list[int]] = defaultdict(list)
        for i, sample in enumerate(samples):
            assert sample.latent is not None, "decode() takes finished samples"
            by_shape[tuple(sample.latent.shape)].append(i)
        for indices in by_shape.values():
            latents = torch.cat([samples[i].latent for i in indices])  # (n, C, h, w)
            for i, array in zip(indices, self.pipeline.decode_latents(latents), strict=True):
                images[i] = overlay(samples[i].spec, Image.fromarray(array))
        return [images[i] for i in range(len(samples))]


def overlay(spec: SampleSpec, image: Image.Image) -> Image.Image:
    """The decoded image, with the init image's unmasked pixels where `spec.keep_unmasked`."""
    if not spec.keep_unmasked or spec.mask_image is None or spec.init_image is None:
        return image
    repaint = binary_mask(spec.mask_image)[0, 0].numpy() > 0  # (H, W)
    kept = np.asarray(spec.init_image.convert("RGB")).copy()  # (H, W, 3)
    kept[repaint] = np.asarray(image)[repaint]
    return Image.fromarray(kept)
