"""Ending jobs: decode and store finished ones; fail or cancel the rest (record, rq, metrics).

Every ending is two writes, our record first, then rq's registries; both go through
PendingWrites, so a full Redis delays an ending instead of losing it or killing the worker.
Decoding runs on the sampling thread (it is device work); encoding the images (PNG/JPEG/WebP,
~40 ms for a 512 px image) runs on encoder threads while the device samples on, and `collect`
stores each job once its images are ready, in the order the jobs finished.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import TYPE_CHECKING

import torch
from PIL import Image

from jobs.record import JobError, Usage
from jobs.schema import JobStatus
from jobs.store import JobStore
from model.errors import NonFiniteOutput
from workers.images import encode
from workers.metrics import WorkerMetrics
from workers.pending_writes import PendingWrites
from workers.rq_bridge import RqBridge

if TYPE_CHECKING:
    from model.engine import Sample
    from workers.backend import Engine
    from workers.job_in_flight import JobInFlight

log = logging.getLogger(__name__)


PUBLIC_MESSAGES = {
    "nan": "the model produced non-finite values (NaN or inf); nothing was stored",
    "oom": "the device ran out of memory, also with fewer images at once",
    "error": "image generation failed with an internal error (logged by the worker)",
}


def public_message(exc: BaseException, reason: str) -> str:
    """What a client may read about a failure: stable text, never exception internals (paths,
    device details); the worker's log keeps the exception, with the job id."""
    return PUBLIC_MESSAGES.get(reason, "image generation failed")


def classify(exc: BaseException) -> str:
    """Failure reason of an exception, by type: nan, oom or error."""
    if isinstance(exc, NonFiniteOutput):
        return "nan"
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return "oom"
    return "error"


class Retirer:
    """Writes a job's end to our record, rq's registries, metrics and the log, in that order."""

    def __init__(
        self, store: JobStore, bridge: RqBridge, metrics: WorkerMetrics, model_name: str
    ) -> None:
        self.store = store
        self.bridge = bridge
        self.metrics = metrics
        self.model_name = model_name
        self.writes = PendingWrites()  # endings a full Redis refused, retried in order
        self.encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encode")
        self.encoding: deque[tuple[JobInFlight, Future[list[bytes]], float]] = deque()

    def encoding_job(self, job_id: str) -> bool:
        """Whether this job's images are still being encoded."""
        return any(job.job_id == job_id for job, _, _ in self.encoding)

    def collect(self, wait: float | None = 0.0) -> None:
        """Store every job whose images are encoded, oldest first; wait up to `wait` seconds
        for the oldest (None: for all of them)."""
        if self.encoding and wait != 0.0:
            futures = [f for _, f, _ in self.encoding] if wait is None else [self.encoding[0][1]]
            wait_for(futures, timeout=wait)
        while self.encoding and self.encoding[0][1].done():
            job, future, decode_s = self.encoding.popleft()
            try:
                encoded = future.result()
            except Exception as exc:
                self.fail(job, "error", f"encoding failed: {exc}")
                continue
            self._store(job, encoded, decode_s)

    def retire(self, engine: Engine, jobs: list[JobInFlight]) -> None:
        """Decode all finished jobs in one VAE batch; a job whose output is bad fails alone."""
        ordered = [(job, [job.finished[i] for i in sorted(job.finished)]) for job in jobs]
        started = time.monotonic()
        try:
            images = engine.decode([sample for _, samples in ordered for sample in samples])
        except Exception as exc:
            if len(ordered) > 1:  # find the bad member: decode each job on its own
                for job, _ in ordered:
                    self.retire(engine, [job])
                return
            reason = classify(exc)
            log.warning("decode failed job_id=%s reason=%s: %r", ordered[0][0].job_id, reason, exc)
            self.fail(ordered[0][0], reason, public_message(exc, reason))
            return
        decode_s = (time.monotonic() - started) / max(1, len(ordered))
        offset = 0
        for job, samples in ordered:
            job.usage = usage_of(job, samples)
            future = self.encoder.submit(
                encode_all, images[offset : offset + len(samples)], job, self.model_name
            )
            self.encoding.append((job, future, decode_s))
            offset += len(samples)

    def _store(self, job: JobInFlight, encoded: list[bytes], decode_s: float) -> None:
        """Store one job's encoded images, then mark it done everywhere."""
        job_id = job.job_id
        duration = job.running_seconds()
        sampling_s = max(0.0, duration - decode_s)
        stored: list[bool] = []  # the record write's verdict, for the registry write after it

        def record() -> None:
            stored.append(self.store.finish(job_id, JobStatus.succeeded, images=encoded,
                                            sampling_s=sampling_s, decode_s=decode_s,
                                            usage=job.usage))  # fmt: skip

        def registries() -> None:
            if not stored[0]:  # canceled or reconciled meanwhile: rq follows our record
                log.info("job %s ended elsewhere before its images were stored", job_id)
                self.bridge.cancel(job.claim)
                self.metrics.job_ended("canceled")
                return
            self.bridge.succeed(job.claim, {"images": len(encoded)})
            self.metrics.job_ended("succeeded")
            self.metrics.images_stored(job.request.task.value, len(encoded))
            self.metrics.job_duration.observe(duration)
            log.info(
                "job_succeeded job_id=%s images=%d steps=%d seconds=%.3f sampling_s=%.3f "
                "decode_s=%.3f", job_id, len(encoded), job.request.steps, duration, sampling_s,
                decode_s,
            )  # fmt: skip

        self.writes.submit(job_id, record)
        self.writes.submit(job_id, registries)

    def fail(self, job: JobInFlight, reason: str, message: str) -> None:
        """Fail a job for good with a stable reason."""
        job_id, duration = job.job_id, job.running_seconds()
        error = JobError(type=reason, message=message)

        def registries() -> None:
            self.bridge.fail(job.claim, reason, message)
            self.metrics.job_ended("failed", reason)
            self.metrics.job_duration.observe(duration)
            log.warning("job_failed job_id=%s reason=%s message=%s", job_id, reason, message)

        self.writes.submit(job_id, lambda: self.store.finish(job_id, JobStatus.failed, error=error))
        self.writes.submit(job_id, registries)

    def cancel(self, job: JobInFlight, step: int = 0) -> None:
        """Cancel a running job: record, rq's CanceledJobRegistry, metrics."""
        job_id, duration = job.job_id, job.running_seconds()

        def registries() -> None:
            self.bridge.cancel(job.claim)
            self.metrics.job_ended("canceled")
            log.info("job_canceled job_id=%s step=%d seconds=%.3f", job_id, step, duration)

        self.writes.submit(job_id, lambda: self.store.finish(job_id, JobStatus.canceled))
        self.writes.submit(job_id, registries)


def encode_all(images: list[Image.Image], job: JobInFlight, model_name: str) -> list[bytes]:
    """One job's images in its output format (runs on an encoder thread)."""
    return [encode(image, job.request, i, model_name) for i, image in enumerate(images)]


def usage_of(job: JobInFlight, samples: list[Sample]) -> Usage:
    """Tokens of a finished job: its prompt's (the first sample's: all share it), and latent
    positions (h x w) of each output and of each input image at the output's latent size."""
    positions = [
        int(s.latent.shape[-2] * s.latent.shape[-1]) for s in samples if s.latent is not None
    ]
    return Usage(
        text_tokens=samples[0].text_tokens if samples else 0,
        image_tokens=len(job.inputs) * (positions[0] if positions else 0),
        output_tokens=sum(positions),
    )
