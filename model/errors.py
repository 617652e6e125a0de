"""Failures the model reports by type, so callers classify them without reading messages."""

from __future__ import annotations


class NonFiniteOutput(ValueError):
    """Samples produced NaN/inf latents or pixels (e.g. fp16 overflow); `indices` names them."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__(f"non-finite output for samples {indices}")
        self.indices = indices


class Canceled(RuntimeError):
    """A progress callback asked to stop sampling."""
