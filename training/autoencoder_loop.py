"""The stage-1 loop the KL and VQ autoencoders share (LDM Sec. 3); a kind is an objective."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from model.autoencoder import AutoencoderKL
from model.vq import VQAutoencoder
from training.autoencoder_eval import reconstruct
from training.common import (
    Progress,
    learning_rate,
    load_checkpoint,
    psnr,
    save_checkpoint,
    save_grid,
    to_tensor,
)


class LoopSettings(Protocol):
    """The optimisation fields `AutoencoderTraining` and `VQTraining` both have."""

    @property
    def steps(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def learning_rate(self) -> float: ...
    @property
    def warmup(self) -> int: ...
    @property
    def seed(self) -> int: ...
    @property
    def eval_every(self) -> int: ...
    @property
    def checkpoint_every(self) -> int: ...
    @property
    def target_psnr(self) -> float | None: ...


class AutoencoderObjective:
    """What one autoencoder kind adds to `fit_autoencoder`: its loss terms, logs and extra state."""

    name: str  # log-line prefix, "[name] step ..."
    title: str  # the first log line's, "title: 0.06M params, ..."
    stage: str  # the resume message's, "resumed stage from ..."

    def __init__(self, model: AutoencoderKL | VQAutoencoder) -> None:
        self.model = model

    def loss(
        self, x: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to minimise, extra numbers for the progress log) on a batch x (B, 3, H, W)."""
        raise NotImplementedError

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The unscaled latents (B, C, h, w) of x that stage 2 diffuses."""
        raise NotImplementedError

    def crop(self, step: int) -> int | None:
        """Side of this step's random crops; None trains on whole images."""
        return None

    def after_step(self, step: int, generator: torch.Generator) -> dict[str, float]:
        """Work after the optimiser step (VQ: codebook restarts); extra numbers for the log."""
        return {}

    def size_note(self) -> str:
        """Words for the first log line between the downsampling factor and the image count."""
        return ""

    def eval_note(self, codes: torch.Tensor | None) -> str:
        """Words after the held-out PSNR (VQ: codebook usage of the held-out codes)."""
        return ""

    def state(self) -> dict[str, Any]:
        """Extra checkpoint entries, beside the model, optimiser and generator."""
        return {}

    def restore(self, payload: dict[str, Any]) -> None:
        """Take the extra entries back from a checkpoint's payload."""


def zero_init_residuals(model: torch.nn.Module) -> None:
    """Zero each residual branch's last layer, so every block starts as the identity (Fixup).

    Colour then flows through the (linear) skip path from step 0; with random branches the
    encoder merges red/orange/yellow for thousands of steps.
    """
    for name, module in model.named_modules():
        if name.endswith(("conv2", "attn_1.proj_out")) and isinstance(module, torch.nn.Conv2d):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def reconstruction_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean L1 + mean L2 pixel error (VQGAN's L1 term, plus L2: what PSNR measures)."""
    error = rec - x
    # L1 alone sits on the "background everywhere" plateau (objects are ~10% of pixels);
    # the squared term weights the large object errors and is what PSNR measures.
    return error.abs().mean() + error.pow(2).mean()


def random_batch(
    images: np.ndarray, size: int, crop: int | None, generator: torch.Generator
) -> torch.Tensor:
    """`size` images drawn with replacement as (B, 3, H, W) in [-1, 1]; cropped, half flipped."""
    index = torch.randint(len(images), (size,), generator=generator)
    x = to_tensor(images[index.numpy()])  # (B, 3, H, W)
    if crop:
        top, left = torch.randint(x.shape[-1] - crop + 1, (2,), generator=generator)
        x = x[..., top : top + crop, left : left + crop]  # (B, 3, c, c)
    if torch.rand((), generator=generator) < 0.5:  # one coin for the whole batch
        x = x.flip(-1)
    return x


@torch.no_grad()
def latent_scale(objective: AutoencoderObjective, images: np.ndarray) -> float:
    """1 / std of the latents, so the diffusion model sees unit-variance inputs (LDM Sec. 4.3.2)."""
    z = torch.cat(
        [objective.latents(to_tensor(images[i : i + 64])) for i in range(0, len(images), 64)]
    )
    return float(1.0 / z.flatten().std())


def fit_autoencoder(
    objective: AutoencoderObjective,
    parameters: Iterable[torch.nn.Parameter],
    images: np.ndarray,
    held_out: np.ndarray,
    run_dir: Path,
    training: LoopSettings,
    settings: dict[str, Any],
    resume: bool,
) -> Progress:
    """AdamW with warm-up + cosine decay; sets the model's scaling factor, returns the log."""
    model = objective.model
    run_dir.mkdir(parents=True, exist_ok=True)
    optimizer = torch.optim.AdamW(parameters, lr=training.learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(training.seed)
    checkpoint, start = run_dir / "checkpoint.pt", 0
    if resume and checkpoint.exists():
        payload = load_checkpoint(checkpoint, model=model, optimizer=optimizer)
        generator.set_state(payload["generator"])
        objective.restore(payload)
        start = payload["step"]
        print(f"resumed {objective.stage} from {checkpoint} at step {start}", flush=True)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{objective.title}: {params / 1e6:.2f}M params, f={model.config.downsampling_factor}, "
        f"{objective.size_note()}{len(images)} images",
        flush=True,
    )
    (run_dir / "config.json").write_text(json.dumps(settings, indent=2))
    progress = Progress(training.steps, start, every=50, name=objective.name)
    model.train()
    for step in range(start + 1, training.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(
                step - 1, training.steps, training.learning_rate, training.warmup
            )
        x = random_batch(images, training.batch_size, objective.crop(step), generator)
        loss, logs = objective.loss(x, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        logs |= objective.after_step(step, generator)
        progress.update(step, loss.item(), **logs)
        stop = False
        if step % training.eval_every == 0 or step == training.steps:
            model.eval()
            recon, codes = reconstruct(model, held_out)
            value = psnr(held_out, recon)
            note = objective.eval_note(codes)
            print(f"[{objective.name}] step {step} held-out PSNR {value:.2f} dB{note}", flush=True)
            save_grid([*held_out[:8], *recon[:8]], run_dir / f"recon_{step:06d}.png")
            stop = training.target_psnr is not None and value >= training.target_psnr
            model.train()
        if step % training.checkpoint_every == 0 or stop:
            state = {"generator": generator.get_state(), **objective.state()}
            save_checkpoint(checkpoint, step, model=model, optimizer=optimizer, **state)
        if stop:
            print(f"[{objective.name}] reached target PSNR at step {step}; stopping", flush=True)
            break
    model.eval()
    (run_dir / "losses.json").write_text(json.dumps(progress.history))
    scale = latent_scale(objective, images[:1024])
    model.config = dataclasses.replace(model.config, scaling_factor=round(scale, 5))
    return progress
