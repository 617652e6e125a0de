"""`workers.tasks.txt2img`: the function every rq job names, runnable by a plain rq SimpleWorker.

The batching worker never calls it (it reads the job id and runs many jobs per UNet step); a stock
`rq worker -w rq.SimpleWorker --serializer json ldm:default` can, one job at a time, unbatched.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from typing import Any

from redis import Redis
from rq import get_current_job

from jobs.record import JobError
from jobs.schema import JobStatus
from jobs.store import JobStore
from model.engine import BatchEngine
from model.errors import Canceled
from model.txt2img import txt2img as generate
from workers.images import encode
from workers.retire import classify, public_message
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)


@cache
def _engine(model: str, device: str, dtype: str) -> BatchEngine:
    """An engine over this process's resident pipeline (loaded once, on first use)."""
    from model.devices import resolve_device, resolve_dtype
    from model.pipeline import load_pipeline

    resolved = resolve_device(device)
    return BatchEngine(load_pipeline(model, resolved, resolve_dtype(dtype, resolved)))


def _store(settings: WorkerSettings) -> JobStore:
    """A JobStore on the current rq job's connection (or REDIS_URL outside rq)."""
    job = get_current_job()
    redis = job.connection if job is not None else Redis.from_url(settings.redis_url)
    return JobStore(redis, result_ttl=settings.result_ttl, job_timeout=int(settings.job_timeout))


def txt2img(job_id: str) -> dict[str, Any]:
    """Generate, encode and store every image of one job without batching across jobs."""
    settings = WorkerSettings()
    store = _store(settings)
    record = store.start(job_id)
    if record is None:
        log.info("job %s skipped: canceled or expired before it started", job_id)
        return {"skipped": True}
    request = record.request
    engine = _engine(settings.model, settings.device, settings.dtype)
    started = time.monotonic()

    def on_step(step: int, total: int) -> bool:
        return not store.report_progress({job_id: (step, total)})  # False cancels

    try:
        images = generate(
            engine,
            prompts=[request.prompt] * request.num_images,
            negative_prompts=[request.negative_prompt] * request.num_images,
            seeds=[request.seed + i for i in range(request.num_images)],
            width=request.width, height=request.height, steps=request.steps,
            guidance_scale=request.guidance_scale, sampler=request.sampler.value,
            eta=request.eta, karras=request.karras, callback=on_step,
        )  # fmt: skip
        sampling_s = time.monotonic() - started
        encoded = [encode(image, request, i, settings.model_name) for i, image in enumerate(images)]
    except Canceled:
        store.finish(job_id, JobStatus.canceled)
        return {"canceled": True}
    except Exception as exc:
        reason = classify(exc)
        error = JobError(type=reason, message=public_message(exc, reason))
        store.finish(job_id, JobStatus.failed, error=error)
        raise
    store.finish(job_id, JobStatus.succeeded, images=encoded, sampling_s=sampling_s, decode_s=0.0)
    log.info("job_succeeded job_id=%s images=%d seconds=%.3f", job_id, len(encoded), sampling_s)
    return {"images": len(encoded)}
