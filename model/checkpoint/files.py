"""Reading and writing raw state dicts: safetensors first; `.ckpt` only with weights_only=True."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded, with a message saying why."""


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors in a .safetensors or .ckpt/.pt file, on the CPU."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as error:
            raise CheckpointError(
                f"{path.name} is not a readable safetensors file: {error}"
            ) from None
    if path.suffix in {".ckpt", ".pt", ".pth", ".bin"}:
        try:  # weights_only refuses any pickle that tries to construct arbitrary objects
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as error:  # junk bytes raise anything in its unpickler (KeyError, ...)
            raise CheckpointError(
                f"{path.name} was refused: not a plain-weights checkpoint ({_refusal(error)})"
            ) from None
        if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
            data = data["state_dict"]
        if not isinstance(data, dict):
            raise CheckpointError(f"{path.name} holds no state dict")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    raise CheckpointError(f"unknown checkpoint format {path.suffix!r}: use .safetensors")


TORCH_BOILERPLATE = ("Weights only load failed", "Please file an issue", "Check the documentation")


def _refusal(error: Exception) -> str:
    """The line of a torch.load failure that says why (its weights-only refusal is a page)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if isinstance(error, pickle.UnpicklingError):
        lines = [line for line in lines if not line.startswith(TORCH_BOILERPLATE)]
        return lines[0] if lines else "not a weights-only pickle"
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata in a safetensors header (empty for other formats)."""
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any] | None = None
) -> None:
    """Save contiguous CPU tensors with JSON-encoded metadata values."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), meta)


def load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], what: str) -> None:
    """Copy tensors into a module, naming missing/unexpected keys and mismatched shapes."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {missing[:6]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:6]}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches, e.g. {wrong[:4]}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))
    module.load_state_dict(tensors, strict=True, assign=False)
