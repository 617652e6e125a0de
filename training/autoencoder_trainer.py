"""Stage 1: train the KL-regularized autoencoder (L1 + L2 reconstruction, a small KL term)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.autoencoder import AutoencoderConfig, AutoencoderKL
from model.pipeline import to_uint8
from training.common import (
    Progress,
    load_checkpoint,
    psnr,
    save_checkpoint,
    save_grid,
    seed_everything,
    to_tensor,
)

logger = logging.getLogger(__name__)

# f=4 -> 16x16x4 latents: a 64x64 flat-colour image is a few dozen numbers of content, so 12x
# compression loses nothing visible, while 16 px of latent keeps positions and small shapes legible.
SHAPES_AUTOENCODER = AutoencoderConfig(
    base_channels=16,
    channel_mult=(1, 2, 4),
    num_res_blocks=1,
    latent_channels=4,
    # GroupNorm maps a flat feature map to its pattern across the group's channels, so a flat
    # colour survives only as that pattern: 8-32 channels per group keep it, 1 channel erases it.
    norm_groups=2,
    scaling_factor=1.0,  # replaced by 1/std of the trained latents
)


LOGVAR_INIT = -8.0


@dataclass(frozen=True)
class AutoencoderTraining:
    """Optimisation settings for stage 1."""

    steps: int = 3000
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup: int = 100
    kl_weight: float = 1e-6  # per-sample KL, as CompVis kl-f* configs (relative to summed L1)
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 250
    target_psnr: float | None = None  # stop early once held-out PSNR reaches this
    crop: int | None = None  # random crops (fewer FLOPs) until the last `full_steps` steps
    full_steps: int = 300
    threads: int | None = 2


def zero_init_residuals(model: torch.nn.Module) -> None:
    """Zero each residual branch's last layer, so every block starts as the identity.

    Colour then flows through the (linear) skip path from step 0; with random branches the
    encoder merges red/orange/yellow for thousands of steps.
    """
    for name, module in model.named_modules():
        if name.endswith(("conv2", "attn_1.proj_out")) and isinstance(module, torch.nn.Conv2d):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


@torch.no_grad()
def reconstruct(model: AutoencoderKL, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) -> reconstructions through the posterior mode."""
    out = []
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch])
        out.append(to_uint8(model.decode(model.encode(x).mode())))
    return np.concatenate(out)


@torch.no_grad()
def latent_scale(model: AutoencoderKL, images: np.ndarray) -> float:
    """1 / std of the latents, so the diffusion model sees unit-variance inputs (LDM Sec. 4.3.2)."""
    z = torch.cat(
        [model.encode(to_tensor(images[i : i + 64])).mode() for i in range(0, len(images), 64)]
    )
    return float(1.0 / z.flatten().std())


def save_autoencoder(model: AutoencoderKL, path: Path) -> None:
    """Write config + weights (fp32) for stage 2 to pick up."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": dataclasses.asdict(model.config), "state_dict": model.state_dict()}, path)


def load_autoencoder(path: Path) -> AutoencoderKL:
    """Inverse of `save_autoencoder`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = payload["config"]
    config["channel_mult"] = tuple(config["channel_mult"])
    model = AutoencoderKL(AutoencoderConfig(**config))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def train_autoencoder(
    images: np.ndarray,
    held_out: np.ndarray,
    run_dir: Path,
    config: AutoencoderConfig = SHAPES_AUTOENCODER,
    training: AutoencoderTraining = AutoencoderTraining(),
    resume: bool = True,
    init: Path | None = None,
    decoder_only: bool = False,
) -> AutoencoderKL:
    """Train on uint8 (N, H, W, 3) images; returns the model with its scaling factor set."""
    seed_everything(training.seed, training.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    if init is not None:  # continue from a trained model (e.g. decoder-only fine-tuning)
        model = load_autoencoder(init).train()
        config = model.config
    else:
        model = AutoencoderKL(config)
        with torch.no_grad():  # start with std e^-4: unit posterior noise drowns the untrained code
            model.quant_conv.bias[config.latent_channels :] = LOGVAR_INIT
            zero_init_residuals(model)
    trained = model.parameters()
    if decoder_only:  # the encoder (hence stage-2 latents) stays fixed; only decoding improves
        model.encoder.requires_grad_(False)
        model.quant_conv.requires_grad_(False)
        trained = (p for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(trained, lr=training.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(training.seed)
    checkpoint, start = run_dir / "checkpoint.pt", 0
    if resume and checkpoint.exists():
        payload = load_checkpoint(checkpoint, model=model, optimizer=optimizer)
        generator.set_state(payload["generator"])
        start = payload["step"]
        print(f"resumed stage 1 from {checkpoint} at step {start}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"autoencoder: {params / 1e6:.2f}M params, f={config.downsampling_factor}, "
        f"{len(images)} images",
        flush=True,
    )
    (run_dir / "config.json").write_text(
        json.dumps(
            {"autoencoder": dataclasses.asdict(config), "training": dataclasses.asdict(training)},
            indent=2,
        )
    )
    progress = Progress(training.steps, start, every=50, name="autoencoder")
    model.train()
    for step in range(start + 1, training.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(
                step - 1, training.steps, training.learning_rate, training.warmup
            )
        index = torch.randint(len(images), (training.batch_size,), generator=generator)
        x = to_tensor(images[index.numpy()])  # (B, 3, H, W)
        if training.crop and step <= training.steps - training.full_steps:
            top, left = torch.randint(x.shape[-1] - training.crop + 1, (2,), generator=generator)
            x = x[..., top : top + training.crop, left : left + training.crop]  # (B, 3, c, c)
        if torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        posterior = model.encode(x)
        rec = model.decode(posterior.sample(generator))
        error = rec - x
        # L1 alone sits on the "background everywhere" plateau (objects are ~10% of pixels);
        # the squared term weights the large object errors and is what PSNR measures.
        reconstruction = error.abs().mean() + error.pow(2).mean()
        kl = posterior.kl().mean() / x[0].numel()  # per-pixel, matching the mean reconstruction
        loss = reconstruction + training.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.update(step, loss.item())
        stop = False
        if step % training.eval_every == 0 or step == training.steps:
            model.eval()
            recon = reconstruct(model, held_out)
            value = psnr(held_out, recon)
            print(f"[autoencoder] step {step} held-out PSNR {value:.2f} dB", flush=True)
            save_grid([*held_out[:8], *recon[:8]], run_dir / f"recon_{step:06d}.png")
            stop = training.target_psnr is not None and value >= training.target_psnr
            model.train()
        if step % training.checkpoint_every == 0 or stop:
            save_checkpoint(
                checkpoint, step, model=model, optimizer=optimizer, generator=generator.get_state()
            )
        if stop:
            print(f"[autoencoder] reached target PSNR at step {step}; stopping", flush=True)
            break
    model.eval()
    (run_dir / "losses.json").write_text(json.dumps(progress.history))
    scale = latent_scale(model, images[:1024])
    model.config = dataclasses.replace(model.config, scaling_factor=round(scale, 5))
    save_autoencoder(model, run_dir / "autoencoder.pt")
    print(
        f"[autoencoder] done in {progress.elapsed / 60:.1f} min, scaling_factor {scale:.5f}",
        flush=True,
    )
    return model
