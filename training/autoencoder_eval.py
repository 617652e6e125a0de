"""Autoencoders on held-out shapes: reconstruction PSNR, and codebook usage for VQ (Table 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.autoencoder import AutoencoderKL
from model.pipeline import to_uint8
from model.vq import VQAutoencoder
from training.common import psnr, to_tensor
from training.evaluate import PSNR_SEED
from training.shapes import make_samples, render


def held_out_images(count: int = 256, seed: int = PSNR_SEED) -> np.ndarray:
    """uint8 (N, 64, 64, 3): the scenes `ldm-serve eval shapes` measures reconstruction on."""
    return np.stack([render(s.scene) for s in make_samples(count, seed)])


@torch.no_grad()
def reconstruct(
    model: AutoencoderKL | VQAutoencoder, images: np.ndarray, batch: int = 64
) -> tuple[np.ndarray, torch.Tensor | None]:
    """uint8 (N, H, W, 3) -> (reconstructions, VQ codes (N, h, w) or None for KL).

    KL decodes the posterior mode; VQ decodes the pre-quantization latents, which `decode` snaps
    to the codebook (what a diffusion model's samples go through too).
    """
    param = next(model.parameters())
    out, codes = [], []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch]).to(param.device, param.dtype)  # (b, 3, H, W)
        if isinstance(model, VQAutoencoder):
            z = model.encode(x)  # (b, C, h, w)
            codes.append(model.quantize.codes(z).cpu())  # (b, h, w)
        else:
            z = model.encode(x).mode()
        out.append(to_uint8(model.decode(z)))
    return np.concatenate(out), torch.cat(codes) if codes else None


def codebook_usage(codes: torch.Tensor, codebook_size: int) -> tuple[float, float]:
    """(fraction of the codebook used, perplexity exp(H) of the code histogram) over codes."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()  # (K,)
    p = counts[counts > 0] / counts.sum()
    entropy = -(p * p.log()).sum()  # nats; perplexity k for k equally used codes
    return float((counts > 0).double().mean()), float(entropy.exp())


def load_autoencoder_folder(folder: Path) -> AutoencoderKL | VQAutoencoder:
    """A diffusers AutoencoderKL (`vae/`) or VQModel (`vqvae/`) folder, by its config's class."""
    from model.checkpoint.diffusers_folder import load_vae, load_vq

    config = json.loads((folder / "config.json").read_text())
    load = load_vq if config.get("_class_name") == "VQModel" else load_vae
    return load(folder).eval()


def evaluate_autoencoder(
    model: AutoencoderKL | VQAutoencoder, count: int = 256, seed: int = PSNR_SEED
) -> dict[str, Any]:
    """PSNR (dB, mean over images) on `count` held-out scenes; codebook usage for VQ."""
    images = held_out_images(count, seed)
    recon, codes = reconstruct(model, images)
    config = model.config
    report: dict[str, Any] = {
        "kind": "vq" if isinstance(model, VQAutoencoder) else "kl",
        "f": config.downsampling_factor,
        "latent_channels": config.latent_channels,
        "params": sum(p.numel() for p in model.parameters()),
        "images": count,
        "data_seed": seed,
        "psnr_db": psnr(images, recon),
    }
    if isinstance(model, VQAutoencoder):
        size = model.quantize.embedding.num_embeddings
        used, perplexity = codebook_usage(codes, size)
        report |= {"codebook_size": size, "codes_used": used, "perplexity": perplexity}
    return report
