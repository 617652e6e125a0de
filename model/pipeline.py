"""A loaded latent diffusion model on one device: encode text, run the UNet, decode (LDM Fig. 3).

Sampling lives in the engine (model/engine.py), which depends on this module, never the reverse.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.autoencoder import AutoencoderKL
from model.class_embedder import ClassConditioner
from model.compiled import bucket_rows, compile_call, pad_rows
from model.components import Components
from model.conditioning import NoConditioner, TextConditioner
from model.errors import NonFiniteOutput
from model.ldm_bert import BertConditioner, LDMBert
from model.noise_augmentation import NoiseAugmentation
from model.vae_tiling import decode_tiled

log = logging.getLogger(__name__)


class Pipeline:
    """A loaded model on one device: text conditioner, UNet network call, VAE decode."""

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
        networks = (components.unet, components.vae, components.text_encoder,
                    components.class_embedder)  # fmt: skip
        for module in networks:
            if module is not None:
                module.eval().requires_grad_(False)
        if self.device.type == "cpu":  # oneDNN's blocked conv kernels: measured faster on CPU
            components.unet.to(memory_format=torch.channels_last)
            components.vae.to(memory_format=torch.channels_last)
        self.conditioner = text_conditioner(components, clip_skip, self.device)
        self.tile_latents = 96  # decode larger latents (> 768 px at f=8) in tiles to bound memory
        # Decode this many images at a time: the fp32 VAE's activations dominate peak memory (an
        # H100 run of 4 SD images peaked 2.4x above diffusers' before; docs/benchmarks.md).
        self.decode_batch = 2
        self.compiled = False
        self.unet_call = components.unet.__call__
        self.decode_call = components.vae.decode

    def compile(self, inductor: bool = True) -> None:
        """Run the UNet and the VAE decoder compiled (model/compiled.py): calls are padded to
        batch buckets and each bucket is compiled or captured on first use (see `warm_up`)."""
        self.unet_call = compile_call(self.components.unet, self.device, inductor)
        self.decode_call = compile_call(self.components.vae.decode, self.device, inductor)
        self.compiled = True

    def warm_up(self, width: int, height: int, max_images: int, guided: bool = True) -> None:
        """Compile or capture every UNet bucket up to `max_images` (CFG doubles the rows) and the
        decoder at `width` x `height`, so the first requests of that size wait for nothing."""
        f, c = self.downsampling_factor, self.components.unet.config.in_channels
        context = self.conditioner.encode("")  # (1, L, D)
        rows = (1 + (guided and self.guidable)) * max_images
        buckets = sorted({bucket_rows(n) for n in range(1, rows + 1)})
        with torch.inference_mode():
            for n in buckets:
                x = torch.zeros(n, c, height // f, width // f, device=self.device)
                t = torch.full((n,), 500.0, device=self.device)  # float32, as the engine
                labels = self.class_labels(n)
                self.network(x, t, context.expand(n, -1, -1), labels)
            self.decode_latents(torch.zeros(1, self.latent_channels, height // f, width // f))

    @property
    def latent_scale(self) -> float:
        return self.components.vae.config.scaling_factor

    @property
    def downsampling_factor(self) -> int:
        return self.components.vae.config.downsampling_factor

    @property
    def native_size(self) -> int | None:
        """Image side in pixels the UNet was trained at (its latent side x f), None: unknown."""
        latent = self.components.unet.config.sample_size
        return latent * self.downsampling_factor if latent else None

    @property
    def latent_channels(self) -> int:
        return self.components.vae.config.latent_channels

    @property
    def concat_channels(self) -> int:
        """UNet input channels beyond the latent: 5 for inpainting models (mask + masked-image
        latent, LDM Sec. 3.3's concatenation), 3 for upscalers, 0 for text-to-image ones."""
        return self.components.unet.config.in_channels - self.latent_channels

    @property
    def upscaler(self) -> NoiseAugmentation | None:
        """The low-res input's noise augmentation of an upscaler (x4 layout), else None."""
        return self.components.upscaler

    @property
    def text_conditioned(self) -> bool:
        """Whether the model reads a prompt (False: LDM's unconditional and super-resolution)."""
        return self.components.text_encoder is not None

    @property
    def class_conditioned(self) -> bool:
        """Whether the model samples a class label's images (the paper's ImageNet LDM)."""
        return self.components.class_embedder is not None

    @property
    def guidable(self) -> bool:
        """Whether classifier-free guidance applies: text models (the empty prompt as the
        unconditional row) and class-conditional ones with a null class."""
        if isinstance(self.conditioner, ClassConditioner):
            return self.conditioner.guided
        return self.text_conditioned

    def class_labels(self, n: int) -> torch.Tensor | None:
        """Placeholder labels (n,) for a class-conditional UNet's warm-up, else None."""
        if self.components.unet.config.num_classes is None:
            return None
        return torch.zeros(n, dtype=torch.long, device=self.device)

    @property
    def tasks(self) -> tuple[str, ...]:
        """What this model can do: upscalers upscale (output = f x the input image; the x4
        upscaler, or a model without text whose UNet also reads an image: LDM-SR), unconditional
        and class-conditional models sample, inpainting models inpaint, text-to-image models do
        text-to-image, SDEdit and masked repainting."""
        if self.upscaler is not None or (self.concat_channels and not self.text_conditioned):
            return ("upscale",)
        if not self.text_conditioned:
            return ("sample",)
        return ("inpaint",) if self.concat_channels else ("txt2img", "img2img", "inpaint")

    @property
    def prediction_type(self) -> str:
        return self.components.schedule.prediction_type

    def network(
        self,
        x_in: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """UNet eps/v output (B, C, h, w) float32 for VP inputs, in the model's dtype; `labels`
        (B,) for class-conditional UNets (the upscaler's noise level).

        Never runs a single row: CPU conv kernels differ at batch 1 only, so duplicating a lone
        row keeps every image bit-identical whatever shares its batch. Compiled, every batch is
        padded to its bucket (model/compiled.py) so that a bounded set of shapes ever runs.
        """
        n = len(x_in)
        rows = bucket_rows(n) if self.compiled else max(n, 2)
        args = [x_in.to(self.dtype), t, context] + ([] if labels is None else [labels])
        return self.unet_call(*(pad_rows(a, rows) for a in args))[:n].float()

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Pixels (1, 3, H, W) in [-1, 1] -> scaled latent (1, C, h, w) float32, sampled from the
        posterior with `generator` (one draw of the latent's shape, as diffusers)."""
        vae = self.components.vae
        if not isinstance(vae, AutoencoderKL):
            raise ValueError("this model runs no image-to-image: its autoencoder is a VQ one")
        param = next(vae.parameters())
        pixels = pixels.to(param.device, param.dtype)
        if self.device.type == "cpu":
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        posterior = vae.encode(pixels.repeat(2, 1, 1, 1))[:1]  # never batch 1 (see `network`)
        return (posterior.sample(generator).float() * self.latent_scale).to(self.device)

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
        # never decode a lone latent: CPU conv kernels differ at batch 1 (see `network`)
        z_in = pad_rows(z, bucket_rows(len(z)) if self.compiled else max(len(z), 2))
        if max(z.shape[-2:]) > self.tile_latents:
            f = self.downsampling_factor
            tile = self.tile_latents
            overlap = min(16, tile // 4)  # 16 latent pixels at the default 96
            return decode_tiled(self.decode_call, z_in, f, tile, overlap)[: len(z)]
        return self.decode_call(z_in)[: len(z)]


def text_conditioner(
    components: Components, clip_skip: int, device: torch.device
) -> TextConditioner | BertConditioner | ClassConditioner | NoConditioner:
    """CLIP's conditioner (Stable Diffusion), LDMBert's (the paper's text-to-image model), the
    class embedder's (the paper's ImageNet model), or the empty context of models without text."""
    encoder, tokenizer = components.text_encoder, components.tokenizer
    if components.class_embedder is not None:
        if clip_skip != 1:
            raise ValueError("clip_skip applies to CLIP text encoders only")
        return ClassConditioner(components.class_embedder, device)
    if encoder is None or isinstance(encoder, LDMBert):
        if clip_skip != 1:
            raise ValueError("clip_skip applies to CLIP text encoders only")
        if encoder is None:
            return NoConditioner(device)
        return BertConditioner(tokenizer, encoder)  # type: ignore[arg-type]
    return TextConditioner(tokenizer, encoder, clip_skip)  # type: ignore[arg-type]


def load_pipeline(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    config_dir: str | Path | None = None,
    clip_skip: int = 1,
    tokenizer_dir: str | Path | None = None,
) -> Pipeline:
    """Load a diffusers folder, a single .safetensors/.ckpt file, or a CompVis checkpoint with
    its YAML (`config_dir` a .yaml, a same-stem .yaml or config.yaml beside the .ckpt, or a
    model-zoo folder of config.yaml + model.ckpt; `tokenizer_dir` for its BERT tokenizer)."""
    from model.checkpoint.compvis import explain_missing_config, find_compvis, load_compvis
    from model.checkpoint.diffusers_folder import is_diffusers_folder, load_diffusers
    from model.checkpoint.files import CheckpointError
    from model.checkpoint.ldm_folders import load_ldm_folder

    path = Path(path)
    config = Path(config_dir) if config_dir else None
    compvis = find_compvis(path, config, Path(tokenizer_dir) if tokenizer_dir else None)
    if is_diffusers_folder(path):
        components = load_ldm_folder(path) or load_diffusers(path)
    elif compvis is not None:
        components = load_compvis(*compvis)
    elif path.is_file():
        from model.checkpoint.single_file import load_single_file

        try:
            components = load_single_file(path, config)
        except CheckpointError as error:  # a paper model's .ckpt without its YAML: say so
            explained = error if config else explain_missing_config(path, error)
            if explained is error:
                raise
            raise explained from None
    else:
        raise CheckpointError(f"{path}: not a diffusers folder or a checkpoint file")
    log.info("loaded %s on %s (%s)", path, device, dtype)
    return Pipeline(components, device, dtype, clip_skip)


def to_pixels(image: Image.Image) -> torch.Tensor:
    """An RGB image -> (1, 3, H, W) float32 in [-1, 1], as diffusers' image processor."""
    array = np.asarray(image.convert("RGB")).astype(np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(2.0 * array - 1.0).permute(2, 0, 1)[None]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8, as diffusers' postprocess rounds."""
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
