"""Stage 1, VQ variant: the paper's VQ-regularized autoencoder (VQGAN's loss, no discriminator)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from model.autoencoder import AutoencoderConfig
from model.checkpoint import configs, keymap
from model.checkpoint.diffusers_folder import WEIGHT_NAMES
from model.checkpoint.files import write_safetensors
from model.vq import VectorQuantizer, VQAutoencoder
from training.autoencoder_eval import codebook_usage
from training.autoencoder_loop import (
    AutoencoderObjective,
    fit_autoencoder,
    reconstruction_loss,
    zero_init_residuals,
)
from training.autoencoder_trainer import SHAPES_AUTOENCODER
from training.common import seed_everything

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


class VQObjective(AutoencoderObjective):
    """VQGAN's loss, no discriminator: L1 + L2, codebook + beta * commitment (VQ-VAE, Eq. 3)."""

    name, title, stage = "vq-autoencoder", "VQ autoencoder", "VQ stage 1"
    model: VQAutoencoder

    def __init__(self, model: VQAutoencoder, training: VQTraining) -> None:
        super().__init__(model)
        self.training = training
        self.codebook_size = model.quantize.embedding.num_embeddings
        self.usage = torch.zeros(self.codebook_size, dtype=torch.long)  # hits since last restart
        self.batch_latents = torch.empty(0)  # the last batch's z, where dead codes restart

    def loss(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction through the straight-through codes, plus the quantization terms."""
        z = self.model.encode(x)  # (B, C, H/f, W/f), pre-quantization
        z_q, quantization, codes = quantize_straight_through(
            self.model.quantize, z, self.training.beta
        )
        rec = self.model.decoder(self.model.post_quant_conv(z_q))
        reconstruction = reconstruction_loss(rec, x)
        self.usage += torch.bincount(codes.flatten(), minlength=self.codebook_size)
        self.batch_latents = z.detach()
        return reconstruction + quantization, {"rec": reconstruction.item()}

    def after_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        """Dead-code restarts every `restart_every` steps, until `restart_until` of the run."""
        training, restarted = self.training, 0
        restarting = step <= training.restart_until * training.steps
        if training.restart_every and step % training.restart_every == 0 and restarting:
            quantizer = self.model.quantize
            restarted = restart_dead_codes(quantizer, self.usage, self.batch_latents, generator)
            self.usage.zero_()
        return {"restarted": restarted}

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The pre-quantization latents (what `decode` snaps to the codebook)."""
        return self.model.encode(x)

    def size_note(self) -> str:
        """The codebook size."""
        return f"{self.codebook_size} codes, "

    def eval_note(self, codes: torch.Tensor | None) -> str:
        """Share of codes used and perplexity on the held-out images (LDM Table 8)."""
        assert codes is not None  # `reconstruct` returns the codes of a VQ model
        used, perplexity = codebook_usage(codes, self.codebook_size)
        return f", codes used {used:.1%}, perplexity {perplexity:.1f}"

    def state(self) -> dict[str, Any]:
        """Code hits since the last restart."""
        return {"usage": self.usage}

    def restore(self, payload: dict[str, Any]) -> None:
        """Code hits since the last restart."""
        self.usage = payload["usage"]


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
    model = VQAutoencoder(config, codebook_size)
    with torch.no_grad():
        zero_init_residuals(model)  # as the KL stage: colour flows through the skips from step 0
    settings = {"codebook_size": codebook_size, "training": dataclasses.asdict(training)}
    settings["autoencoder"] = dataclasses.asdict(config)
    objective = VQObjective(model, training)
    progress = fit_autoencoder(
        objective, model.parameters(), images, held_out, run_dir, training, settings, resume
    )
    save_vq_autoencoder(model, run_dir / "autoencoder.pt")
    folder = save_vq_folder(model, output or run_dir / "vqvae", dtype)
    print(
        f"[vq-autoencoder] done in {progress.elapsed / 60:.1f} min, "
        f"scaling_factor {model.config.scaling_factor:.5f}, wrote {folder}",
        flush=True,
    )
    return model
