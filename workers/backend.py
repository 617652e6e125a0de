"""What the batching loop drives on the model side: an engine factory and the device it runs on.

The production backend wraps model.engine.BatchEngine; fault tests inject an Engine that
misbehaves on cue (tests/fault_worker.py). Both satisfy the `Engine` protocol below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from model.engine import Sample, SampleSpec


class Engine(Protocol):
    """The part of model.engine.BatchEngine the loop drives."""

    def add(self, spec: SampleSpec, tag: tuple[str, int]) -> Sample: ...
    def groups(self) -> dict[tuple, list[Sample]]: ...
    def step_costs(self) -> dict[tuple, int]: ...
    def step(self, key: tuple | None = None) -> list[Sample]: ...
    def remove(self, sample: Sample) -> None: ...
    def decode(self, samples: list[Sample]) -> list[Image.Image]: ...
    def __len__(self) -> int: ...


@dataclass
class Backend:
    """A fresh engine on demand (after a failed step the old one may hold half-updated state)."""

    engine_factory: Callable[[], Engine]
    device: str = "cpu"
    compile_seconds: float = 0.0  # compile and capture before the first job (0: eager)
    tasks: tuple[str, ...] = ("txt2img", "img2img", "inpaint")  # what the model can do
    # Words of a closed-vocabulary tokenizer (None: any word): the API warns about others.
    known_words: frozenset[str] | None = None
    # Models without text that sample (jobs.schema.Task.sample): the size the UNet was trained at,
    # and a class-conditional model's class names ("" where unnamed; None: it takes no class).
    native_size: int | None = None
    class_names: tuple[str, ...] | None = None
