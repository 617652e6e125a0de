"""Shared training utilities: images as tensors, PSNR, grids, progress, the learning-rate schedule
and resumable checkpoints."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


def seed_everything(seed: int, threads: int | None = None) -> None:
    """Seed Python, numpy and torch; optionally pin the number of CPU threads."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    array = np.stack(images) if not isinstance(images, np.ndarray) else images
    return torch.from_numpy(array).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Mean PSNR in dB over uint8 images (N, H, W, 3), peak 255."""
    error = (reference.astype(np.float64) - estimate.astype(np.float64)) ** 2
    mse = error.reshape(len(reference), -1).mean(axis=1).clip(1e-10)
    return float((10.0 * np.log10(255.0**2 / mse)).mean())


def save_grid(images: Sequence[np.ndarray], path: Path, columns: int = 8, pad: int = 2) -> None:
    """Tile uint8 (H, W, 3) images into one PNG with a white gutter."""
    h, w, _ = images[0].shape
    rows = (len(images) + columns - 1) // columns
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + c * (w + pad) : pad + c * (w + pad) + w,
        ] = image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def learning_rate(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of the base rate (SGDR, Loshchilov & Hutter 2017)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


class Progress:
    """A log-friendly progress bar: step, rate, ETA and running loss, every `every` steps."""

    def __init__(self, total: int, start: int = 0, every: int = 50, name: str = "train") -> None:
        self.total, self.start, self.every, self.name = total, start, every, name
        self.began = time.monotonic()
        self.losses: list[float] = []
        self.history: list[float] = []  # every loss, for tests and plots

    def update(self, step: int, loss: float, **extra: float) -> None:
        self.losses.append(loss)
        self.history.append(loss)
        if step % self.every and step != self.total:
            return
        done = step - self.start
        rate = done / max(time.monotonic() - self.began, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        filled = int(30 * step / self.total)
        bar = "#" * filled + "." * (30 - filled)
        info = " ".join(f"{k}={v:.4g}" for k, v in extra.items())
        mean = sum(self.losses) / len(self.losses)
        print(
            f"[{self.name}] [{bar}] {step}/{self.total} {rate:.2f} it/s eta {eta / 60:.1f} min "
            f"loss {mean:.4f} {info}",
            flush=True,
        )
        self.losses.clear()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.began


def save_checkpoint(path: Path, step: int, **state: Any) -> None:
    """Atomically write a checkpoint (modules and optimizers saved via their state_dict)."""
    payload = {"step": step, "torch_rng": torch.get_rng_state()}
    for name, value in state.items():
        payload[name] = value.state_dict() if hasattr(value, "state_dict") else value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, **state: Any) -> dict[str, Any]:
    """Restore modules/optimizers in place from `path`; returns the raw payload (step, extras)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for name, value in state.items():
        value.load_state_dict(payload[name])
    torch.set_rng_state(payload["torch_rng"])
    return payload


class EMA:
    """Exponential moving average of parameters, with the usual warm-up min(decay, (1+n)/(10+n))."""

    def __init__(self, module: torch.nn.Module, decay: float = 0.999) -> None:
        self.decay, self.updates = decay, 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        floats, targets = [], []
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                floats.append(self.shadow[k])
                targets.append(v.detach())
            else:
                self.shadow[k].copy_(v)
        torch._foreach_lerp_(floats, targets, 1 - decay)  # shadow += (1 - decay) (v - shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy into the existing shadow, so it stays on the module's device."""
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        self.updates = state["updates"]
