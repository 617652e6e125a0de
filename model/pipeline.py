"""Text-to-image with a latent diffusion model: encode text, sample latents, decode (LDM Fig. 3)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.components import Components
from model.conditioning import TextConditioner
from model.engine import BatchEngine, SampleSpec, to_uint8
from model.sampling.samplers import SAMPLERS
from model.vae_tiling import decode_tiled

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], bool | None]  # (step, total) -> False cancels


class NonFiniteOutput(ValueError):
    """A sample produced NaN/inf latents or pixels (e.g. fp16 overflow)."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"non-finite output for samples {indices}")
        self.indices = indices


class Cancelled(RuntimeError):
    """The progress callback asked to stop."""


class Pipeline:
    """A loaded model on one device, with the text conditioner and a txt2img entry point."""

    def __init__(
        self,
        components: Components,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        clip_skip: int = 1,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.components = components.to(self.device, dtype)
        for module in (components.unet, components.vae, components.text_encoder):
            module.eval().requires_grad_(False)
        if self.device.type == "cpu":  # oneDNN's blocked conv kernels: measured faster on CPU
            components.unet.to(memory_format=torch.channels_last)
            components.vae.to(memory_format=torch.channels_last)
        self.conditioner = TextConditioner(components.tokenizer, components.text_encoder, clip_skip)
        self.sampler_names = tuple(SAMPLERS)
        self.tile_latents = 96  # decode larger latents (> 768 px at f=8) in tiles to bound memory
        # Decode this many images at a time: the fp32 VAE's activations dominate peak memory (an
        # H100 run of 4 SD images peaked 2.4x above diffusers' before; docs/benchmarks.md).
        self.decode_batch = 2

    @property
    def latent_scale(self) -> float:
        return self.components.vae.config.scaling_factor

    @torch.inference_mode()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """VP latents (B, C, h, w) -> uint8 images (B, H, W, 3); raises NonFiniteOutput."""
        vae = self.components.vae
        bad = [i for i in range(len(latents)) if not torch.isfinite(latents[i]).all()]
        if bad:
            raise NonFiniteOutput(bad)
        param = next(vae.parameters())
        z = latents.to(param.device, param.dtype) / self.latent_scale  # (B, C, h, w)
        pixels = torch.cat(
            [
                self._decode(z[i : i + self.decode_batch])
                for i in range(0, len(z), self.decode_batch)
            ]
        )
        bad = [i for i in range(len(pixels)) if not torch.isfinite(pixels[i]).all()]
        if bad:
            raise NonFiniteOutput(bad)
        return to_uint8(pixels)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (b, C, h, w) -> pixels (b, 3, H, W) in [-1, 1], tiled when large."""
        vae = self.components.vae
        # never decode a lone latent: CPU conv kernels differ at batch 1 (see engine)
        z_in = z.repeat(2, 1, 1, 1) if len(z) == 1 else z
        if max(z.shape[-2:]) > self.tile_latents:
            f = vae.config.downsampling_factor
            return decode_tiled(vae.decode, z_in, f, self.tile_latents)[: len(z)]
        return vae.decode(z_in)[: len(z)]

    def txt2img(
        self,
        prompts: Sequence[str],
        negative_prompts: Sequence[str] | None = None,
        seeds: Sequence[int] | None = None,
        width: int = 512,
        height: int = 512,
        steps: int = 25,
        guidance_scale: float = 7.5,
        sampler: str = "ddim",
        eta: float = 0.0,
        karras: bool = False,
        callback: ProgressCallback | None = None,
    ) -> list[Image.Image]:
        """Generate one image per prompt; image i uses Generator('cpu').manual_seed(seeds[i])."""
        negatives = list(negative_prompts or [""] * len(prompts))
        seeds = list(seeds if seeds is not None else range(len(prompts)))
        if not len(prompts) == len(negatives) == len(seeds):
            raise ValueError("prompts, negative_prompts and seeds must have the same length")
        engine = BatchEngine(self, max_batch=len(prompts))
        handles = [
            engine.add(
                SampleSpec(
                    prompt,
                    negative,
                    seed,
                    width,
                    height,
                    steps,
                    guidance_scale,
                    sampler,
                    eta,
                    karras,
                ),
                tag=i,
            )
            for i, (prompt, negative, seed) in enumerate(
                zip(prompts, negatives, seeds, strict=True)
            )
        ]
        total = max(h.total_steps for h in handles)
        step = 0
        while len(engine):
            engine.step()
            step += 1
            if callback is not None and callback(step, total) is False:
                raise Cancelled(f"cancelled at step {step}/{total}")
        return engine.decode(handles)


def load_pipeline(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config_dir: str | Path | None = None,
    clip_skip: int = 1,
) -> Pipeline:
    """Load a diffusers folder or a single .safetensors/.ckpt file onto a device."""
    from model.checkpoint.diffusers_folder import is_diffusers_folder, load_diffusers
    from model.checkpoint.files import CheckpointError

    path = Path(path)
    if is_diffusers_folder(path):
        components = load_diffusers(path)
    elif path.is_file():
        from model.checkpoint.single_file import load_single_file

        components = load_single_file(path, Path(config_dir) if config_dir else None)
    else:
        raise CheckpointError(f"{path}: not a diffusers folder or a checkpoint file")
    log.info("loaded %s on %s (%s)", path, device, dtype)
    return Pipeline(components, device, dtype, clip_skip)
