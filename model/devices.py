"""Device and dtype names as settings and flags spell them (`auto`, `cuda:1`, `float16`)."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> str:
    """`auto` -> cuda when available, else cpu; anything else as given."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto` -> float16 on CUDA, float32 elsewhere; else one of DTYPES."""
    if name == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown dtype {name!r}; expected auto or one of {sorted(DTYPES)}"
        ) from None
