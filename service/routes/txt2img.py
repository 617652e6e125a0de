"""POST /v1/txt2img: validate, enqueue, answer 202 with the job (Idempotency-Key aware)."""

# No `from __future__ import annotations`: the body type is built from settings at runtime and
# FastAPI must see the class object, not a string it cannot resolve.

import logging
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Response, status

from jobs.idempotency import body_fingerprint
from jobs.schema import JobRecord, JobStatus, ResolvedRequest, Txt2ImgRequest, request_model
from jobs.store import JobStore
from service.deps import Claims, Metrics, Store
from service.openapi import problem_responses
from service.ratelimit import RateLimitedOwner
from service.settings import ApiSettings
from service.views import JobView, job_path, job_view

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


def queued_record(job_id: str, owner: str, request: ResolvedRequest) -> JobRecord:
    """The record of a job about to be enqueued."""
    return JobRecord(
        id=job_id,
        status=JobStatus.queued,
        owner=owner,
        request=request,
        created_at=time.time(),
        progress_total=request.steps,
    )


def job_reply(response: Response, store: JobStore, record: JobRecord) -> JobView:
    """The job as the body, its URL in Location."""
    response.headers["Location"] = job_path(record.id)
    return job_view(record, store.queue_position(record))


def build_router(settings: ApiSettings) -> APIRouter:
    """Router whose request model carries this deployment's bounds (visible in OpenAPI)."""
    body_model = request_model(settings.limits, settings.models)
    router = APIRouter(tags=["txt2img"])

    @router.post(
        "/v1/txt2img",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobView,
        response_model_by_alias=True,
        responses={
            200: {"description": "Idempotent replay", "model": JobView, "headers": LOCATION},
            202: {"headers": LOCATION},
            **problem_responses(400, 401, 409, 410, 413, 422, 429, 503),
        },
        summary="Queue a text-to-image job",
    )
    def submit(
        payload: body_model,  # type: ignore[valid-type]  # Txt2ImgRequest subclass
        response: Response,
        owner: RateLimitedOwner,
        store: Store,
        claims: Claims,
        metrics: Metrics,
        idempotency_key: IdempotencyKey = None,
    ) -> JobView:
        """Validate and enqueue; the job JSON links to its status, events and images."""
        body: Txt2ImgRequest = payload
        job_id = str(uuid.uuid4())
        key = idempotency_key.strip('"') if idempotency_key is not None else None
        if key is not None:
            fingerprint = body_fingerprint(body.model_dump(mode="json"))
            earlier = claims.claim(owner, key, fingerprint, job_id)
            if earlier is not None:
                response.status_code = status.HTTP_200_OK
                response.headers["Idempotent-Replayed"] = "true"
                return job_reply(response, store, earlier)
        record = queued_record(job_id, owner, body.resolve(settings.model_name))
        try:
            store.create(
                record,
                max_queue=settings.max_queue,
                max_active=settings.active_job_limit,
                cost_budget=settings.cost_budget,
            )
        except Exception:
            if key is not None:
                claims.release(owner, key)  # no job was made: the key is free again
            raise  # quota and queue refusals become problems in service/errors.py
        metrics.submitted.labels(record.request.model).inc()
        logger.info("job %s queued model=%s steps=%d", job_id, record.request.model,
                    record.request.steps)  # fmt: skip
        return job_reply(response, store, record)

    return router
