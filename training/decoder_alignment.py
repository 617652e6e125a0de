"""Stage 3 (optional): fine-tune the decoder on the diffusion model's own latents.

The UNet's latents are close to, but not exactly, the encoder's: a square comes out with slightly
wavy edges, which the stage-1 decoder renders faithfully. Pairs (UNet latent, true image) come from
SDEdit (Meng et al., 2022): noise a dataset image's latent to t ~ 280-680, denoise it with the
trained UNet and guidance, and keep the original image as the target. The decoder learns to draw
clean shapes from the UNet's latents (as SD's fine-tuned VAE decoders and OpenAI's consistency
decoder do for Stable Diffusion); the encoder, the latent space and the UNet are unchanged.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.autoencoder import AutoencoderKL
from model.components import Components
from model.pipeline import to_uint8
from model.sampling.schedule import alphas_cumprod
from training.common import learning_rate, psnr, to_tensor
from training.ldm_trainer import token_ids

GRID = list(range(999, -1, -40))  # 25 DDIM steps: t = 999, 959, ..., 39


@dataclass(frozen=True)
class AlignTraining:
    """Settings for stage 3 (the defaults made the shipped decoder)."""

    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 1e-4
    warmup: int = 50
    generated_fraction: float = 0.75  # the rest of each batch: clean latents, to keep recon
    guidance_scale: float = 3.0
    first_step: tuple[int, int] = (8, 18)  # SDEdit starts at GRID[k], k uniform in this range
    held_out: int = 256  # the first images: PSNR before/after, never trained on
    seed: int = 0


@torch.no_grad()
def sdedit_latents(
    components: Components,
    captions: Sequence[str],
    images: np.ndarray,
    training: AlignTraining,
    generator: torch.Generator,
    rng: random.Random,
) -> torch.Tensor:
    """Unscaled UNet latents (N, z, h, w) for the images: DDIM from a random GRID step, with CFG."""
    unet, vae, text = components.unet, components.vae, components.text_encoder
    scale, a_bar = vae.config.scaling_factor, alphas_cumprod(components.schedule)
    out = []
    for i in range(0, len(images), 32):
        n = len(images[i : i + 32])
        z0 = vae.encode(to_tensor(images[i : i + 32])).mode() * scale  # (n, z, h, w)
        k = rng.randint(*training.first_step)
        a = a_bar[GRID[k]]
        z = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=generator)
        cond = text(token_ids(components.tokenizer, captions[i : i + n])).last_hidden_state
        uncond = text(token_ids(components.tokenizer, [""] * n)).last_hidden_state
        for j in range(k, len(GRID)):
            a = a_bar[GRID[j]]
            a_prev = a_bar[GRID[j + 1]] if j + 1 < len(GRID) else torch.tensor(1.0)
            t = torch.full((2 * n,), float(GRID[j]))
            v_uncond, v_cond = unet(torch.cat([z, z]), t, torch.cat([uncond, cond])).chunk(2)
            v = v_uncond + training.guidance_scale * (v_cond - v_uncond)  # (n, z, h, w)
            x0 = a.sqrt() * z - (1 - a).sqrt() * v  # v-prediction -> clean latent and noise
            eps = a.sqrt() * v + (1 - a).sqrt() * z
            z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps  # DDIM, eta = 0
        out.append(z / scale)
    return torch.cat(out)


def align_decoder(
    components: Components,
    autoencoder: AutoencoderKL,
    captions: Sequence[str],
    images: np.ndarray,
    training: AlignTraining = AlignTraining(),
) -> dict[str, float]:
    """Fine-tune `autoencoder`'s decoder in place on SDEdit pairs; returns PSNRs before/after."""
    rng, generator = random.Random(training.seed), torch.Generator().manual_seed(training.seed)
    began = time.monotonic()
    generated = sdedit_latents(components, captions, images, training, generator, rng)
    print(f"[align] {len(images)} SDEdit latents in {time.monotonic() - began:.0f} s", flush=True)
    held = min(training.held_out, len(images) // 4)
    with torch.no_grad():
        chunks = [to_tensor(images[i : i + 64]) for i in range(0, len(images), 64)]
        clean = torch.cat([autoencoder.encode(x).mode() for x in chunks])  # (N, z, h, w)
        report = {
            "generated_psnr_before": psnr(
                images[:held], to_uint8(autoencoder.decode(generated[:held]))
            )
        }
    decoder = [
        p for n, p in autoencoder.named_parameters() if n.startswith(("decoder", "post_quant"))
    ]
    for p in autoencoder.parameters():
        p.requires_grad_(False)
    for p in decoder:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(
        decoder, lr=training.learning_rate, weight_decay=0.0, foreach=True
    )
    autoencoder.train()
    for step in range(training.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(
                step, training.steps, training.learning_rate, training.warmup
            )
        index = torch.randint(held, len(images), (training.batch_size,), generator=generator)
        use = torch.rand(training.batch_size, generator=generator) < training.generated_fraction
        z = torch.where(use.view(-1, 1, 1, 1), generated[index], clean[index])  # (B, z, h, w)
        target = to_tensor(images[index.numpy()])
        out = autoencoder.decode(z)
        loss = F.l1_loss(out, target) + F.mse_loss(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == training.steps - 1:
            print(f"[align] step {step}/{training.steps} loss {loss.item():.4f}", flush=True)
    autoencoder.eval().requires_grad_(False)
    with torch.no_grad():
        report["generated_psnr_after"] = psnr(
            images[:held], to_uint8(autoencoder.decode(generated[:held]))
        )
        report["clean_psnr_after"] = psnr(images[:held], to_uint8(autoencoder.decode(clean[:held])))
    print(f"[align] {report}", flush=True)
    return report
