"""Ending jobs: decode and store finished ones; fail or cancel the rest (record, rq, metrics)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from jobs.schema import JobError, JobStatus
from jobs.store import JobStore
from workers.images import encode
from workers.metrics import WorkerMetrics
from workers.rq_bridge import RqBridge

if TYPE_CHECKING:
    from workers.runtime import Engine, Run

log = logging.getLogger(__name__)


class NonFiniteError(ValueError):
    """Latents or pixels contained NaN/inf: never stored as a success."""


def classify(exc: BaseException) -> str:
    """Failure reason of an exception: oom, nan or error."""
    if isinstance(exc, NonFiniteError) or type(exc).__name__ == "NonFiniteOutput":
        return "nan"  # ours, or model.pipeline.NonFiniteOutput from the VAE decode
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return "oom"
    except ImportError:  # pragma: no cover - workers always have torch
        pass
    return "error"


def check_finite(handles: list[Any]) -> None:
    """Raise NonFiniteError if any handle exposes non-finite latents."""
    import torch

    for handle in handles:
        for name in ("latents", "latent", "x", "sample"):
            value = getattr(handle, name, None)
            if isinstance(value, torch.Tensor):
                if not bool(torch.isfinite(value).all()):
                    raise NonFiniteError(f"non-finite latents in image {handle.tag[1]}")
                break


class Retirer:
    """Writes a job's end to our record, rq's registries, metrics and the log, in that order."""

    def __init__(
        self, store: JobStore, bridge: RqBridge, metrics: WorkerMetrics, model_name: str
    ) -> None:
        self.store = store
        self.bridge = bridge
        self.metrics = metrics
        self.model_name = model_name

    def retire(self, engine: Engine, runs: list[Run]) -> None:
        """Decode all finished jobs in one VAE batch; a job whose output is bad fails alone."""
        ordered = [(run, [run.finished[i] for i in sorted(run.finished)]) for run in runs]
        started = time.monotonic()
        try:
            for _, handles in ordered:
                check_finite(handles)
            images = engine.decode([h for _, handles in ordered for h in handles])
        except Exception as exc:
            if len(ordered) > 1:  # find the bad member: decode each job on its own
                for run, _ in ordered:
                    self.retire(engine, [run])
                return
            self.fail(ordered[0][0], classify(exc), str(exc) or type(exc).__name__)
            return
        decode_s = (time.monotonic() - started) / max(1, len(ordered))
        offset = 0
        for run, handles in ordered:
            self._store(run, images[offset : offset + len(handles)], decode_s)
            offset += len(handles)

    def _store(self, run: Run, images: list[Any], decode_s: float) -> None:
        """Encode and store one job's images, then mark it done everywhere."""
        job_id = run.slot.job_id
        try:
            encoded = [encode(img, run.request, i, self.model_name) for i, img in enumerate(images)]
        except Exception as exc:
            self.fail(run, "error", f"encoding failed: {exc}")
            return
        duration = time.monotonic() - run.started
        sampling_s = max(0.0, duration - decode_s)
        stored = self.store.finish(
            job_id, JobStatus.succeeded, images=encoded, sampling_s=sampling_s, decode_s=decode_s
        )
        if not stored:  # canceled or reconciled meanwhile: rq follows our record
            log.info("job %s ended elsewhere before its images were stored", job_id)
            self.bridge.cancel(run.claim)
            self.metrics.job_ended("canceled")
            return
        self.bridge.succeed(run.claim, {"images": len(encoded)})
        self.metrics.job_ended("succeeded")
        self.metrics.images.inc(len(encoded))
        self.metrics.job_duration.observe(duration)
        log.info(
            "job_succeeded job_id=%s images=%d steps=%d seconds=%.3f sampling_s=%.3f decode_s=%.3f",
            job_id, len(encoded), run.request.steps, duration, sampling_s, decode_s,
        )  # fmt: skip

    def fail(self, run: Run, reason: str, message: str) -> None:
        """Fail a job for good with a stable reason."""
        job_id = run.slot.job_id
        self.store.finish(job_id, JobStatus.failed, error=JobError(type=reason, message=message))
        self.bridge.fail(run.claim, reason, message)
        self.metrics.job_ended("failed", reason)
        self.metrics.job_duration.observe(time.monotonic() - run.started)
        log.warning("job_failed job_id=%s reason=%s message=%s", job_id, reason, message)

    def cancel(self, run: Run, step: int = 0) -> None:
        """Cancel a running job: record, rq's CanceledJobRegistry, metrics."""
        job_id = run.slot.job_id
        self.store.finish(job_id, JobStatus.canceled)
        self.bridge.cancel(run.claim)
        self.metrics.job_ended("canceled")
        log.info(
            "job_canceled job_id=%s step=%d seconds=%.3f",
            job_id, step, time.monotonic() - run.started,
        )  # fmt: skip
