"""Stage 2: the text-conditioned UNet and its CLIP text encoder (tau_theta), trained jointly."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from model.autoencoder import AutoencoderKL
from model.checkpoint.diffusers_folder import save_diffusers
from model.conditioning import WINDOW, windows
from model.sampling.schedule import ScheduleConfig, alphas_cumprod
from model.unet import UNet, UNetConfig
from training.autoencoder_trainer import load_autoencoder
from training.common import (
    EMA,
    Progress,
    learning_rate,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
    to_tensor,
)
from training.evaluate import quick_check
from training.shapes import Sample, caption, vocabulary_corpus
from training.tokenizer_builder import build_tokenizer
from training.warm_start import warm_start

# 16x16x4 latents: levels at 16, 8, 4, 2 px; attention at 8x8 and below. Absolute position ("on
# the left") reaches a convolutional UNet only through zero padding; at 2x2 every pixel touches two
# borders and the middle block's cross-attention sees the whole layout in 4 tokens (+2.5% FLOPs).
# Capacity was not what held positions back: this UNet and the 3-level one both learn to draw a
# blob where a prompt says from pure noise in ~50 steps; the eps -> v change below is the likely
# cause (the eps model stayed at chance on positions over 7,000 steps).
SHAPES_UNET = UNetConfig(
    model_channels=32,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    attention_levels=(False, True, True, True),
    num_heads=(2, 4, 4, 4),  # 16-channel heads at 64 channels
    context_dim=64,
    use_linear_projection=True,
    norm_groups=8,
)
SHAPES_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": WINDOW,
}
# DDPM's linear betas (Ho et al., 2020) end at alpha_bar_T ~ 4e-5: tiny 16x16 latents need that
# much noise at t = T, where SD's scaled_linear schedule would leave 7% of the signal.
# v-prediction (Salimans & Ho, 2022): the eps loss weighs x0 errors by SNR(t) ~ 0 at high noise,
# exactly where the layout (position, background) is decided; the v loss weighs them by SNR + 1.
SHAPES_SCHEDULE = ScheduleConfig(
    beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="v_prediction"
)


@dataclass(frozen=True)
class LDMTraining:
    """Optimisation settings for stage 2."""

    steps: int = 6000
    batch_size: int = 64
    learning_rate: float = 5e-4
    warmup: int = 200
    caption_dropout: float = 0.1  # empty caption, for classifier-free guidance
    ema_decay: float = 0.999
    seed: int = 0
    checkpoint_every: int = 500
    sample_every: int = 1000
    sample_prompts: int = 48
    threads: int | None = 2
    device: str = "cpu"  # batches are drawn on the CPU either way, so a seed means the same data


def token_ids(tokenizer: CLIPTokenizer, texts: Sequence[str]) -> torch.Tensor:
    """(B, 77) ids: each text's first window, exactly as the inference TextConditioner lays it."""
    batch = tokenizer(list(texts), add_special_tokens=False, truncation=False).input_ids
    return torch.tensor([windows(tokenizer, ids)[0] for ids in batch])


def target(
    schedule: ScheduleConfig, z0: torch.Tensor, eps: torch.Tensor, a: torch.Tensor
) -> torch.Tensor:
    """The regression target: eps (Ho et al., 2020) or v = sqrt(a) eps - sqrt(1 - a) z0."""
    if schedule.prediction_type == "epsilon":
        return eps
    if schedule.prediction_type == "v_prediction":
        return a.sqrt() * eps - (1 - a).sqrt() * z0  # (B, z, h, w)
    raise ValueError(f"training does not support prediction_type={schedule.prediction_type!r}")


def _fastest_adam(device: torch.device) -> dict[str, bool]:
    """Fused AdamW on CUDA, multi-tensor on the CPU (the per-tensor default costs ~6% of a step)."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def text_encoder_for(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A small CLIPTextModel over the tokenizer's vocabulary."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES_TEXT,
    )
    return CLIPTextModel(config)


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL, images: np.ndarray, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, z, h, w) of every image, computed once for all of training."""
    vae = vae.to(device)
    means, stds = [], []
    for i in range(0, len(images), 128):
        posterior = vae.encode(to_tensor(images[i : i + 128]).to(device))
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    vae.to("cpu")
    return torch.cat(means), torch.cat(stds)


class Captions:
    """Captions per step: shapes scenes are re-captioned with fresh templates; strings are fixed."""

    def __init__(self, items: Sequence[Sample] | Sequence[str], seed: int) -> None:
        self.items, self.rng = items, random.Random(seed)

    def words(self) -> list[str]:
        if self.items and isinstance(self.items[0], Sample):
            return vocabulary_corpus()
        return sorted(
            {w for text in self.items for w in str(text).lower().replace(",", " , ").split()}
        )

    def get(self, index: Sequence[int]) -> list[str]:
        out = []
        for i in index:
            item = self.items[i]
            out.append(caption(item.scene, self.rng).caption if isinstance(item, Sample) else item)
        return out


def train_ldm(
    images: np.ndarray,
    captions: Sequence[Sample] | Sequence[str],
    autoencoder: Path,
    run_dir: Path,
    output: Path,
    unet_config: UNetConfig = SHAPES_UNET,
    schedule: ScheduleConfig = SHAPES_SCHEDULE,
    training: LDMTraining = LDMTraining(),
    resume: bool = True,
    init: Path | None = None,
) -> Path:
    """Train stage 2 on pre-encoded latents; writes the diffusers folder `output`.

    `init`: a stage-2 checkpoint to start from when not resuming (see warm_start)."""
    seed_everything(training.seed, training.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    vae = load_autoencoder(autoencoder)
    scale = vae.config.scaling_factor
    latents_file = run_dir / "latents.pt"
    if resume and latents_file.exists():
        mean, std = torch.load(latents_file, weights_only=True)
    else:
        print(f"[ldm] pre-encoding {len(images)} images once", flush=True)
        mean, std = encode_latents(vae, images, training.device)
        torch.save((mean, std), latents_file)
    texts = Captions(captions, training.seed)
    # the latent side it trains at: diffusers' default size is sample_size x the VAE's factor
    unet_config = dataclasses.replace(unet_config, sample_size=int(mean.shape[-1]))
    tokenizer = build_tokenizer(texts.words(), run_dir / "tokenizer_files")
    device = torch.device(training.device)
    unet, text_encoder = UNet(unet_config).to(device), text_encoder_for(tokenizer)
    text_encoder.to(device)  # type: ignore[arg-type]  # in place; transformers mistypes .to()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(
        params, lr=training.learning_rate, weight_decay=0.0, **_fastest_adam(device)
    )
    ema_unet, ema_text = EMA(unet, training.ema_decay), EMA(text_encoder, training.ema_decay)
    a_bar = alphas_cumprod(schedule)  # (T,)
    generator = torch.Generator().manual_seed(training.seed)
    checkpoint, start = run_dir / "checkpoint.pt", 0
    if resume and checkpoint.exists():
        payload = load_checkpoint(
            checkpoint,
            unet=unet,
            text_encoder=text_encoder,
            optimizer=optimizer,
            ema_unet=ema_unet,
            ema_text=ema_text,
        )
        generator.set_state(payload["generator"])
        texts.rng.setstate(payload["caption_rng"])
        start = payload["step"]
        print(f"[ldm] resumed from {checkpoint} at step {start}", flush=True)
    elif init is not None:
        new_blocks = warm_start(unet, text_encoder, init)
        ema_unet, ema_text = EMA(unet, training.ema_decay), EMA(text_encoder, training.ema_decay)
        print(
            f"[ldm] started from {init}; new blocks (identity at first): {new_blocks}", flush=True
        )
    n_unet = sum(p.numel() for p in unet.parameters())
    n_text = sum(p.numel() for p in text_encoder.parameters())
    print(
        f"[ldm] unet {n_unet / 1e6:.2f}M, text encoder {n_text / 1e6:.2f}M params, latents "
        f"{tuple(mean.shape[1:])}, scale {scale:.4f}, device {device}",
        flush=True,
    )
    (run_dir / "config.json").write_text(
        json.dumps(
            {
                "unet": dataclasses.asdict(unet_config),
                "schedule": dataclasses.asdict(schedule),
                "text": SHAPES_TEXT,
                "training": dataclasses.asdict(training),
            },
            indent=2,
        )
    )

    def export(path: Path) -> Path:
        """EMA weights as a diffusers folder (fp16), tokenizer files included."""
        ema_u, ema_t = UNet(unet_config), text_encoder_for(tokenizer)
        ema_u.load_state_dict(ema_unet.shadow)
        ema_t.load_state_dict(ema_text.shadow)
        save_diffusers(
            path, unet=ema_u, vae=vae, text_encoder=ema_t, tokenizer=tokenizer, schedule=schedule
        )
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(run_dir / "tokenizer_files" / name, path / "tokenizer" / name)
        return path

    progress = Progress(training.steps, start, every=50, name="ldm")
    unet.train()
    text_encoder.train()
    for step in range(start + 1, training.steps + 1):
        lr = learning_rate(step - 1, training.steps, training.learning_rate, training.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        index = torch.randint(len(mean), (training.batch_size,), generator=generator)
        noise = torch.randn(mean[index].shape, generator=generator)
        z0 = (mean[index] + std[index] * noise) * scale  # (B, z, h, w) posterior sample, scaled
        batch_texts = texts.get(index.tolist())
        drop = torch.rand(len(batch_texts), generator=generator) < training.caption_dropout
        batch_texts = ["" if d else t for t, d in zip(batch_texts, drop.tolist(), strict=True)]
        t = torch.randint(len(a_bar), (training.batch_size,), generator=generator)
        eps = torch.randn(z0.shape, generator=generator)
        a = a_bar[t].view(-1, 1, 1, 1)
        z0, eps, a, t = (x.to(device, non_blocking=True) for x in (z0, eps, a, t))
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps  # DDPM forward process q(z_t | z_0)
        ids = token_ids(tokenizer, batch_texts).to(device)  # (B, 77)
        context = text_encoder(ids).last_hidden_state  # (B, 77, D)
        loss = F.mse_loss(unet(zt, t.float(), context), target(schedule, z0, eps, a))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        progress.update(step, loss.item(), lr=lr)
        if step % training.checkpoint_every == 0 or step == training.steps:
            save_checkpoint(
                checkpoint,
                step,
                unet=unet,
                text_encoder=text_encoder,
                optimizer=optimizer,
                ema_unet=ema_unet,
                ema_text=ema_text,
                generator=generator.get_state(),
                caption_rng=texts.rng.getstate(),
            )
        if training.sample_every and step % training.sample_every == 0 and step < training.steps:
            quick_check(export(run_dir / "snapshot"), run_dir, step, training.sample_prompts)
    print(f"[ldm] trained in {progress.elapsed / 60:.1f} min", flush=True)
    (run_dir / "losses.json").write_text(json.dumps(progress.history))
    return export(output)
