"""Test-only worker entry point: the production worker with an engine that misbehaves on cue.

A sample whose prompt contains a marker misbehaves in `step()`:
  FAULT_RAISE  raises RuntimeError          FAULT_OOM   raises torch.cuda.OutOfMemoryError
  FAULT_NAN    finishes with NaN latents     FAULT_HANG  never returns (watchdog case)
  FAULT_EXIT   os._exit(9) on its first attempt; FAULT_EXIT_ALWAYS on every attempt
  FAULT_SLOW   every step of its batch takes 0.1 s longer
Every step sleeps LDM_FAULT_STEP_SLEEP seconds (slow jobs for cancel/SIGTERM/timeout tests).
Every admitted sample appends its prompt to $LDM_FAULT_DIR/adds.log (execution counting).

Run: python -m tests.fault_worker (same env vars as `ldm-serve worker`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from model.engine import BatchEngine, Sample, SampleSpec
from workers.backend import Backend, Engine
from workers.process import configure_logging, model_backend, run_worker
from workers.settings import WorkerSettings


class FaultEngine:
    """Wraps a real BatchEngine; injects the fault its samples' prompts ask for."""

    def __init__(self, engine: BatchEngine, fault_dir: Path, step_sleep: float) -> None:
        self.engine = engine
        self.fault_dir = fault_dir
        self.step_sleep = step_sleep

    def __len__(self) -> int:
        return len(self.engine)

    def add(self, spec: SampleSpec, tag: tuple[str, int]) -> Sample:
        with open(self.fault_dir / "adds.log", "a") as log:
            log.write(f"{spec.prompt}\t{tag}\n")
        return self.engine.add(spec, tag=tag)

    def remove(self, sample: Sample) -> None:
        self.engine.remove(sample)

    def decode(self, samples: list[Sample]) -> list[Image.Image]:
        return self.engine.decode(samples)

    def groups(self) -> dict[tuple, list[Sample]]:
        return self.engine.groups()

    def step_costs(self) -> dict[tuple, int]:
        return self.engine.step_costs()

    def step(self, key: tuple | None = None) -> list[Sample]:
        groups = self.engine.groups()
        stepped = [s for k, group in groups.items() if key in (None, k) for s in group]
        prompts = [sample.spec.prompt for sample in stepped]
        time.sleep(self.step_sleep + (0.1 if any("FAULT_SLOW" in p for p in prompts) else 0.0))
        if any("FAULT_RAISE" in p for p in prompts):
            raise RuntimeError("injected failure")
        if any("FAULT_OOM" in p for p in prompts):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        if any("FAULT_HANG" in p for p in prompts):
            while True:
                time.sleep(1)
        for prompt in prompts:
            if "FAULT_EXIT_ALWAYS" in prompt:
                os._exit(9)
            marker = self.fault_dir / f"exited-{hashlib.sha1(prompt.encode()).hexdigest()}"
            if "FAULT_EXIT" in prompt and not marker.exists():
                marker.touch()
                os._exit(9)
        finished = self.engine.step(key)
        for sample in finished:
            if "FAULT_NAN" in sample.spec.prompt:
                trajectory = sample.trajectory
                trajectory.latent = torch.full_like(trajectory.latent, float("nan"))
        return finished


def fault_backend(settings: WorkerSettings) -> Backend:
    """The production backend with every engine wrapped in a FaultEngine."""
    backend = model_backend(settings)
    fault_dir = Path(os.environ.get("LDM_FAULT_DIR", "."))
    fault_dir.mkdir(parents=True, exist_ok=True)
    step_sleep = float(os.environ.get("LDM_FAULT_STEP_SLEEP", "0"))
    make = backend.engine_factory

    def engine_factory() -> Engine:
        engine = make()
        assert isinstance(engine, BatchEngine)
        return FaultEngine(engine, fault_dir, step_sleep)

    return dataclasses.replace(backend, engine_factory=engine_factory)  # all else as produced


if __name__ == "__main__":
    worker_settings = WorkerSettings()
    configure_logging(worker_settings.log_level)
    sys.exit(run_worker(worker_settings, fault_backend))
