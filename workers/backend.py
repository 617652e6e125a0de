"""What the batching loop holds: the model-side runtime it drives and one record per claimed job."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from jobs.schema import ResolvedRequest
from workers.batching import Slot
from workers.rq_bridge import Claim


class Handle(Protocol):
    """A sample inside the engine (model.engine handle)."""

    steps_done: int
    total_steps: int
    tag: Any


class Engine(Protocol):
    """The subset of model.engine.BatchEngine the loop drives."""

    def add(self, spec: Any, tag: Any = None) -> Any: ...
    def step(self) -> list[Any]: ...
    def remove(self, handle: Any) -> None: ...
    def decode(self, handles: list[Any]) -> list[Any]: ...
    def __len__(self) -> int: ...


@dataclass
class Runtime:
    """What the loop needs from the model layer, injectable for fault tests."""

    engine_factory: Callable[[], Engine]
    spec_factory: Callable[..., Any]
    device: str = "cpu"


@dataclass
class Run:
    """Everything the worker holds for one claimed job."""

    claim: Claim
    request: ResolvedRequest
    slot: Slot
    started: float = field(default_factory=time.monotonic)
    timeout: float = 600.0
    active: dict[int, Any] = field(default_factory=dict)  # image index -> engine handle
    finished: dict[int, Any] = field(default_factory=dict)
