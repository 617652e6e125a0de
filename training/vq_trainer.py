"""Stage 1, VQ variant: the paper's VQ-regularized autoencoder (VQGAN's loss, no discriminator)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from model.autoencoder import AutoencoderConfig
from model.checkpoint import configs, keymap
from model.checkpoint.diffusers_folder import WEIGHT_NAMES
from model.checkpoint.files import write_safetensors
from model.vq import VectorQuantizer, VQAutoencoder
from training.autoencoder_eval import codebook_usage, reconstruct
from training.autoencoder_trainer import SHAPES_AUTOENCODER, learning_rate, zero_init_residuals
from training.common import (
    Progress,
    load_checkpoint,
    psnr,
    save_checkpoint,
    save_grid,
    seed_everything,
    to_tensor,
)

# 90% of the shapes data's aligned 4x4 patches are one of 9 flat colours and the rest are object
# edges; 256 codes (8 bits per latent pixel) leave ~250 for edges, and a codebook this small is
# still pulled into use within a CPU budget of ~2,000 steps (the paper's 8,192 would mostly idle).
SHAPES_CODEBOOK = 256


@dataclass(frozen=True)
class VQTraining:
    """Optimisation settings for the VQ autoencoder."""

    steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 5e-4
    warmup: int = 100
    beta: float = 0.25  # commitment weight (van den Oord et al., 2017; VQGAN)
    restart_every: int = 50  # steps between dead-code restarts; 0: never
    restart_until: float = 0.8  # none in the last 20%: the decoder learns every code it will see
    seed: int = 0
    eval_every: int = 250
    checkpoint_every: int = 250
    target_psnr: float | None = None  # stop early once held-out PSNR reaches this
    threads: int | None = 2


def quantize_straight_through(
    quantizer: VectorQuantizer, z: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z_q with straight-through gradients, codebook + beta * commitment loss, codes (B, h, w)).

    Codebook loss ||sg[z] - e||^2 moves the codes, commitment ||z - sg[e]||^2 the encoder
    (van den Oord et al., 2017, Eq. 3; diffusers' legacy quantizer swaps the two weights).
    """
    codes = quantizer.codes(z.detach())  # (B, h, w)
    z_q = rearrange(quantizer.embedding(codes), "b h w c -> b c h w").contiguous()  # (B, C, h, w)
    loss = F.mse_loss(z_q, z.detach()) + beta * F.mse_loss(z, z_q.detach())
    return z + (z_q - z).detach(), loss, codes


@torch.no_grad()
def restart_dead_codes(
    quantizer: VectorQuantizer, usage: torch.Tensor, z: torch.Tensor, generator: torch.Generator
) -> int:
    """Move codes unused since the last restart onto random latents of z (B, C, h, w).

    A code no latent picks gets no gradient and stays dead; re-seeding it where the data is
    (as Jukebox and k-means restarts do) keeps the whole codebook in play. Returns how many moved.
    """
    dead = (usage == 0).nonzero().flatten()  # (D,)
    if len(dead) == 0:
        return 0
    flat = rearrange(z, "b c h w -> (b h w) c")  # (B*h*w, C)
    picks = torch.randint(len(flat), (len(dead),), generator=generator)
    quantizer.embedding.weight[dead] = flat[picks].to(quantizer.embedding.weight.dtype)
    return len(dead)


def save_vq_autoencoder(model: VQAutoencoder, path: Path) -> None:
    """Write config, codebook size and weights (fp32), as `save_autoencoder` does for KL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": dataclasses.asdict(model.config),
        "codebook_size": model.quantize.embedding.num_embeddings,
        "state_dict": model.state_dict(),
    }
    torch.save(payload, path)


def load_vq_autoencoder(path: Path) -> VQAutoencoder:
    """Inverse of `save_vq_autoencoder`."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = payload["config"]
    config["channel_mult"] = tuple(config["channel_mult"])
    model = VQAutoencoder(AutoencoderConfig(**config), payload["codebook_size"])
    model.load_state_dict(payload["state_dict"])
    return model.eval()


def vq_config_to_diffusers(model: VQAutoencoder) -> dict:
    """The diffusers VQModel config.json (what `configs.vq_config_from_diffusers` reads back)."""
    return configs.vae_config_to_diffusers(model.config) | {
        "_class_name": "VQModel",
        "num_vq_embeddings": model.quantize.embedding.num_embeddings,
        "vq_embed_dim": model.config.latent_channels,
        "norm_type": "group",
        "mid_block_add_attention": True,
        "lookup_from_codebook": False,
        "force_upcast": False,
    }


def save_vq_folder(model: VQAutoencoder, folder: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write a diffusers VQModel folder (config.json + diffusion_pytorch_model.safetensors)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(vq_config_to_diffusers(model), indent=2) + "\n")
    tensors = {k: v.to(dtype) for k, v in model.state_dict().items()}
    table = keymap.vq_prefixes(model.config)
    write_safetensors(keymap.diffusers_from_compvis(tensors, table), folder / WEIGHT_NAMES[0])
    return folder


def train_vq_autoencoder(
    images: np.ndarray,
    held_out: np.ndarray,
    run_dir: Path,
    config: AutoencoderConfig = SHAPES_AUTOENCODER,
    training: VQTraining = VQTraining(),
    codebook_size: int = SHAPES_CODEBOOK,
    resume: bool = True,
    output: Path | None = None,
    dtype: torch.dtype = torch.float32,
) -> VQAutoencoder:
    """Train on uint8 (N, H, W, 3) images; writes autoencoder.pt and a VQModel folder (`output`,
    default run_dir/vqvae) and returns the model with its scaling factor set."""
    seed_everything(training.seed, training.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    model = VQAutoencoder(config, codebook_size)
    with torch.no_grad():
        zero_init_residuals(model)  # as the KL stage: colour flows through the skips from step 0
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(training.seed)
    usage = torch.zeros(codebook_size, dtype=torch.long)  # code hits since the last restart
    checkpoint, start = run_dir / "checkpoint.pt", 0
    if resume and checkpoint.exists():
        payload = load_checkpoint(checkpoint, model=model, optimizer=optimizer)
        generator.set_state(payload["generator"])
        usage, start = payload["usage"], payload["step"]
        print(f"resumed VQ stage 1 from {checkpoint} at step {start}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"VQ autoencoder: {params / 1e6:.2f}M params, f={config.downsampling_factor}, "
        f"{codebook_size} codes, {len(images)} images",
        flush=True,
    )
    settings = {"codebook_size": codebook_size, "training": dataclasses.asdict(training)}
    settings["autoencoder"] = dataclasses.asdict(config)
    (run_dir / "config.json").write_text(json.dumps(settings, indent=2))
    progress = Progress(training.steps, start, every=50, name="vq-autoencoder")
    model.train()
    for step in range(start + 1, training.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(
                step - 1, training.steps, training.learning_rate, training.warmup
            )
        index = torch.randint(len(images), (training.batch_size,), generator=generator)
        x = to_tensor(images[index.numpy()])  # (B, 3, H, W)
        if torch.rand((), generator=generator) < 0.5:
            x = x.flip(-1)
        z = model.encode(x)  # (B, C, H/f, W/f), pre-quantization
        z_q, quantization, codes = quantize_straight_through(model.quantize, z, training.beta)
        rec = model.decoder(model.post_quant_conv(z_q))
        error = rec - x
        reconstruction = error.abs().mean() + error.pow(2).mean()  # L1 + L2, as the KL stage
        loss = reconstruction + quantization
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage += torch.bincount(codes.flatten(), minlength=codebook_size)
        restarted = 0
        restarting = step <= training.restart_until * training.steps
        if training.restart_every and step % training.restart_every == 0 and restarting:
            restarted = restart_dead_codes(model.quantize, usage, z.detach(), generator)
            usage.zero_()
        progress.update(step, loss.item(), rec=reconstruction.item(), restarted=restarted)
        stop = False
        if step % training.eval_every == 0 or step == training.steps:
            model.eval()
            recon, held_codes = reconstruct(model, held_out)
            value = psnr(held_out, recon)
            used, perplexity = codebook_usage(held_codes, codebook_size)
            print(
                f"[vq-autoencoder] step {step} held-out PSNR {value:.2f} dB, codes used "
                f"{used:.1%}, perplexity {perplexity:.1f}",
                flush=True,
            )
            save_grid([*held_out[:8], *recon[:8]], run_dir / f"recon_{step:06d}.png")
            stop = training.target_psnr is not None and value >= training.target_psnr
            model.train()
        if step % training.checkpoint_every == 0 or stop:
            save_checkpoint(
                checkpoint,
                step,
                model=model,
                optimizer=optimizer,
                generator=generator.get_state(),
                usage=usage,
            )
        if stop:
            print(f"[vq-autoencoder] reached target PSNR at step {step}; stopping", flush=True)
            break
    model.eval()
    (run_dir / "losses.json").write_text(json.dumps(progress.history))
    with torch.no_grad():  # 1 / std of the pre-quantization latents diffusion would run on
        some = images[:1024]
        z = torch.cat([model.encode(to_tensor(some[i : i + 64])) for i in range(0, len(some), 64)])
    scale = float(1.0 / z.flatten().std())
    model.config = dataclasses.replace(model.config, scaling_factor=round(scale, 5))
    save_vq_autoencoder(model, run_dir / "autoencoder.pt")
    folder = save_vq_folder(model, output or run_dir / "vqvae", dtype)
    print(
        f"[vq-autoencoder] done in {progress.elapsed / 60:.1f} min, scaling_factor {scale:.5f}, "
        f"wrote {folder}",
        flush=True,
    )
    return model
