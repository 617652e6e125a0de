"""Stage 1: train the KL-regularized autoencoder (L1 + L2 reconstruction, a small KL term)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.autoencoder import AutoencoderConfig, AutoencoderKL
from training.autoencoder_loop import (
    AutoencoderObjective,
    fit_autoencoder,
    reconstruction_loss,
    zero_init_residuals,
)
from training.common import seed_everything

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


class KLObjective(AutoencoderObjective):
    """L1 + L2 reconstruction plus a small KL to N(0, I) (LDM Sec. 3, "KL-reg.")."""

    name, title, stage = "autoencoder", "autoencoder", "stage 1"
    model: AutoencoderKL

    def __init__(self, model: AutoencoderKL, training: AutoencoderTraining) -> None:
        super().__init__(model)
        self.training = training

    def crop(self, step: int) -> int | None:
        """Random crops (fewer FLOPs) until the last `full_steps` steps."""
        training = self.training
        return training.crop if step <= training.steps - training.full_steps else None

    def loss(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction of a posterior sample, plus the weighted per-pixel KL."""
        posterior = self.model.encode(x)
        rec = self.model.decode(posterior.sample(generator))
        kl = posterior.kl().mean() / x[0].numel()  # per-pixel, matching the mean reconstruction
        return reconstruction_loss(rec, x) + self.training.kl_weight * kl, {}

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mode."""
        return self.model.encode(x).mode()


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
    settings = {"autoencoder": dataclasses.asdict(config), "training": dataclasses.asdict(training)}
    objective = KLObjective(model, training)
    progress = fit_autoencoder(
        objective, trained, images, held_out, run_dir, training, settings, resume
    )
    save_autoencoder(model, run_dir / "autoencoder.pt")
    print(
        f"[autoencoder] done in {progress.elapsed / 60:.1f} min, "
        f"scaling_factor {model.config.scaling_factor:.5f}",
        flush=True,
    )
    return model
