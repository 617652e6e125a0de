"""Queueing a validated job, shared by every task's route: the Idempotency-Key claim, the
record and its rq job in one transaction (with an image task's uploads), the 202 reply."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import Header, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from jobs.idempotency import IdempotencyClaims, body_fingerprint
from jobs.model_profile import ModelProfile, read_profile
from jobs.record import JobRecord
from jobs.schema import JobStatus, Limits, ResolvedRequest, Task, Txt2ImgRequest
from jobs.store import JobStore
from service.errors import Problem
from service.metrics import ApiMetrics
from service.openapi import problem_responses
from service.redis_client import with_fresh_deadline
from service.settings import ApiSettings
from service.views import JobView, job_path, job_view
from service.webhooks import attach_webhook, check_webhook

logger = logging.getLogger(__name__)

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r'^"?[\x21\x23-\x7e]{1,253}"?$',
        description="same key + same body -> same job; same key + other body -> 422",
    ),
]

LOCATION = {
    "Location": {"description": "URL of the job", "required": True, "schema": {"type": "string"}}
}
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Idempotent replay", "model": JobView, "headers": LOCATION},
    202: {"headers": LOCATION},
    **problem_responses(400, 401, 409, 410, 413, 422, 429, 503),
}


def queued_record(
    job_id: str, owner: str, request: ResolvedRequest, profile: ModelProfile | None = None
) -> JobRecord:
    """The record of a job about to be enqueued, with the model's advice on its request."""
    return JobRecord(
        id=job_id,
        status=JobStatus.queued,
        owner=owner,
        request=request,
        created_at=time.time(),
        progress_total=request.steps,
        warnings=profile.warnings(request) if profile is not None else [],
    )


def job_reply(response: Response, store: JobStore, record: JobRecord) -> JobView:
    """The job as the body, its URL in Location."""
    response.headers["Location"] = job_path(record.id)
    return job_view(record, store.queue_position(record))


def invalid(field: str, message: str) -> RequestValidationError:
    """A 422 naming `field`, in the same shape as the framework's own."""
    return RequestValidationError([{"loc": ("body", field), "msg": message, "type": "value_error"}])


@contextmanager
def dialect_field_names(names: Mapping[str, str]) -> Iterator[None]:
    """A 422 raised inside names the fields a dialect's caller sent (cfg_scale, not
    guidance_scale); a message about one of several fields sent as one says which (size's width)."""
    try:
        yield
    except RequestValidationError as exc:
        sent = list(names.values())
        errors = []
        for error in exc.errors():
            loc = [part for part in error["loc"] if isinstance(part, str)]
            message = str(error.get("msg", "")).removeprefix("Value error, ")
            native = next((part for part in loc if sent.count(names.get(part, "")) > 1), None)
            if native and native not in message:
                message = f"{native}: {message}"
            renamed = tuple(names.get(p, p) if isinstance(p, str) else p for p in error["loc"])
            errors.append({**error, "loc": renamed, "msg": message})
        raise RequestValidationError(errors) from None


def check_size(
    limits: Limits, width: int, height: int, steps: int, images: int, blame: Mapping[str, str]
) -> None:
    """422 unless each side is within the size bounds and the pixel and cost caps hold; `blame`
    names the request field answerable for "width", "height" and the "area"."""
    for field, value in (("width", width), ("height", height)):
        if not limits.min_size <= value <= limits.max_size:
            raise invalid(blame[field], f"{field} {value} is outside [{limits.min_size}, "
                                        f"{limits.max_size}]")  # fmt: skip
    if width * height > limits.max_pixels:
        raise invalid(blame["area"], f"{width}x{height} exceeds the maximum of "
                                     f"{limits.max_pixels} pixels")  # fmt: skip
    if width * height * steps * images > limits.max_cost:
        raise invalid(blame["area"], "width x height x steps x num_images exceeds the cost cap "
                                     f"LDM_MAX_COST = {limits.max_cost}")  # fmt: skip


def check_task(store: JobStore, settings: ApiSettings, model: str, task: Task) -> None:
    """422 when the model's workers said they cannot run `task`, naming the models that can
    (a model no worker has described yet is given the benefit of the doubt)."""
    published = store.fleet.model_tasks(settings.models)
    if published.get(model) is None or task.value in (published[model] or ()):
        return
    able = [name for name, tasks in published.items() if tasks and task.value in tasks]
    runs = ", ".join(published[model] or ())
    message = f"model {model!r} cannot run {task.value} (it runs: {runs}); " + (
        f"models that can: {', '.join(able)}" if able else "no served model can"
    )
    raise invalid("model", message)


def enqueue(
    body: Txt2ImgRequest,
    job_id: str,
    owner: str,
    key: str | None,
    response: Response,
    deps: tuple[ApiSettings, JobStore, IdempotencyClaims, ApiMetrics],
    resolved: Mapping[str, Any] | None = None,
    inputs: Mapping[str, bytes] | None = None,
) -> JobView:
    """Claim the Idempotency-Key (a replay answers 200 with the earlier job), then store the
    record, its rq job and `inputs` atomically; `resolved` overrides request values."""
    settings, store, claims, metrics = deps
    model = body.model or settings.model_name
    check_task(store, settings, model, type(body).task)
    check_webhook(body.webhook, settings)
    profile = read_profile(store.redis, model)  # before the key's claim: nothing to undo
    key = key.strip('"') if key is not None else None
    if key is not None:
        fingerprint = body_fingerprint(body.model_dump(mode="json"))
        earlier = claims.claim(owner, key, fingerprint, job_id)
        if earlier is not None:
            response.status_code = status.HTTP_200_OK
            response.headers["Idempotent-Replayed"] = "true"
            return job_reply(response, store, earlier)
    request = body.resolve(settings.model_name, **(resolved or {}))
    record = queued_record(job_id, owner, request, profile)
    record = attach_webhook(record, body.webhook, settings)
    try:
        store.create(
            record,
            max_queue=settings.max_queue,
            max_active=settings.active_job_limit,
            cost_budget=settings.cost_budget,
            inputs=inputs,
        )
    except Exception:
        if key is not None:
            claims.release(owner, key)  # no job was made: the key is free again
        raise  # quota and queue refusals become problems in service/errors.py
    metrics.submitted.labels(request.model, request.task.value).inc()
    logger.info("job %s queued model=%s task=%s steps=%d", job_id, request.model,
                request.task.value, request.steps)  # fmt: skip
    return job_reply(response, store, record)


async def finished(store: JobStore, job_id: str, timeout: float) -> JobRecord:
    """Wait for a job to succeed (the synchronous dialects): its record; 504 after `timeout`
    naming the job, 500 when it failed or was canceled. Each poll has a Redis deadline of its
    own: the wait outlasts the request's."""
    deadline = time.monotonic() + timeout
    while True:
        record = await run_in_threadpool(with_fresh_deadline, store.get, job_id)
        if record is not None and record.status.terminal:
            break
        if time.monotonic() > deadline:
            raise Problem(504, "timeout", "Timeout", f"job {job_id} is still running after "
                          f"{timeout:g} s; GET /v1/jobs/{job_id} has it")  # fmt: skip
        await asyncio.sleep(0.1)
    if record.status != JobStatus.succeeded:
        message = record.error.message if record.error else record.status.value
        raise Problem(500, "job-failed", "Job failed",
                      f"job {job_id} {record.status.value}: {message}")  # fmt: skip
    return record


async def images_of_finished(store: JobStore, record: JobRecord) -> list[bytes]:
    """A finished job's images, read under a fresh Redis deadline (the wait used the request's)."""
    return await run_in_threadpool(with_fresh_deadline, _read_images, store, record)


def _read_images(store: JobStore, record: JobRecord) -> list[bytes]:
    return [store.get_image(record.id, i) or b"" for i in range(record.request.num_images)]
