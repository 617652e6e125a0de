"""Class conditioning of the paper's ImageNet LDM: a label -> one learned cross-attention token
(Rombach et al. 2022, Sec. 4.2 and Tab. 3; CompVis `ClassEmbedder`, `cond_stage_model.embedding`).

The cin256-v2 model has 1001 rows: the 1000 ImageNet classes and a "null" class (index 1000) that
stands for no class, which classifier-free guidance uses as its unconditional row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import torch
from torch import nn

IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class ClassEmbedderConfig:
    """Rows of the table (the null class included), token width, the null class (None: the
    model has none, so it samples unguided) and the names of classes 0..n-1 (may be empty)."""

    num_classes: int
    embed_dim: int
    null_class: int | None = None
    class_names: tuple[str, ...] = field(default=(), compare=False)

    @property
    def labels(self) -> int:
        """Number of real classes (the null class excluded)."""
        return self.num_classes - (self.null_class is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes, "embed_dim": self.embed_dim,
                "null_class": self.null_class, "class_names": list(self.class_names)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassEmbedderConfig:
        null = d.get("null_class")
        return cls(int(d["num_classes"]), int(d["embed_dim"]), None if null is None else int(null),
                   tuple(d.get("class_names") or ()))  # fmt: skip


@cache
def imagenet_class_names() -> tuple[str, ...]:
    """ILSVRC-2012 class names in index order (each class's WordNet lemmas, comma-separated)."""
    text = resources.files("model").joinpath("data/imagenet_classes.txt").read_text()
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    return tuple(lemmas for _, _, lemmas in rows)


def default_class_names(labels: int) -> tuple[str, ...]:
    """ImageNet's names for a 1000-class model (the paper's cin models), none otherwise."""
    return imagenet_class_names() if labels == IMAGENET_CLASSES else ()


class ClassEmbedder(nn.Module):
    """Class labels (B,) -> context (B, 1, D): one token per image for cross-attention."""

    def __init__(self, config: ClassEmbedderConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.num_classes, config.embed_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None]  # (B, 1, D)


class ClassConditioner:
    """Class labels -> contexts (1, 1, D), the null class as guidance's unconditional row."""

    def __init__(self, embedder: ClassEmbedder, device: torch.device) -> None:
        self.embedder = embedder.eval().requires_grad_(False)
        self.config = embedder.config
        self.device = device

    @property
    def context_dim(self) -> int:
        return self.config.embed_dim

    @property
    def guided(self) -> bool:
        """Whether the model has a null class, so classifier-free guidance can apply."""
        return self.config.null_class is not None

    def token_count(self, prompt: str) -> int:
        return 0

    @torch.no_grad()
    def encode_label(self, label: int) -> torch.Tensor:
        """Context (1, 1, D) of one class; ValueError outside 0..labels-1."""
        if not 0 <= label < self.config.labels:
            raise ValueError(f"class_label {label} is outside 0..{self.config.labels - 1}")
        return self.embedder(torch.tensor([label], device=self.device))

    @torch.no_grad()
    def encode_null(self) -> torch.Tensor:
        """Context (1, 1, D) of the null class (guidance's unconditional row)."""
        if self.config.null_class is None:
            raise ValueError("this class-conditional model has no null class: it samples unguided")
        return self.embedder(torch.tensor([self.config.null_class], device=self.device))

    def encode(self, prompt: str, min_chunks: int = 1) -> torch.Tensor:
        """A context of the right shape for warm-up: the null class, else class 0."""
        return self.encode_null() if self.guided else self.encode_label(0)
