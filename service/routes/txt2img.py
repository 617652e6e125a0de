"""POST /v1/txt2img: validate, enqueue, answer 202 with the job (Idempotency-Key aware)."""

# No `from __future__ import annotations`: the body type is built from settings at runtime and
# FastAPI must see the class object, not a string it cannot resolve.

import hashlib
import json
import logging
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status

from jobs import keys
from jobs.quota import ActiveLimitError
from jobs.schema import JobRecord, JobStatus, Txt2ImgRequest, request_model
from jobs.store import JobStore, QueueFullError
from service.deps import Store
from service.errors import Problem
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


def body_fingerprint(body: Txt2ImgRequest) -> str:
    """sha256 of the normalised request (defaults filled in, keys sorted)."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(store: JobStore, owner: str, claim: dict[str, str], fingerprint: str) -> JobRecord:
    """The job an earlier request with this Idempotency-Key created (or the right problem)."""
    if claim.get("body_sha256") != fingerprint:
        raise Problem(
            422,
            "idempotency-conflict",
            "Idempotency-Key reused",
            "Idempotency-Key was already used with a different request body",
        )
    record = store.get(claim["job_id"])
    if record is not None and record.owner == owner:
        return store.reconcile(record)
    if store.tombstone(claim["job_id"]) == owner:
        raise Problem(410, "gone", "Gone", "the job created with this Idempotency-Key expired")
    raise Problem(
        409,
        "idempotency-in-flight",
        "Request in progress",
        "a request with this Idempotency-Key is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )


def build_router(settings: ApiSettings) -> APIRouter:
    """Router whose request model carries this deployment's bounds (visible in OpenAPI)."""
    body_model = request_model(settings.limits)
    router = APIRouter(tags=["txt2img"])
    retry_after = {"Retry-After": str(settings.retry_after_s)}
    idem_ttl = settings.queue_ttl + settings.job_timeout + settings.result_ttl

    @router.post(
        "/v1/txt2img",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobView,
        response_model_by_alias=True,
        responses={200: {"description": "Idempotent replay", "model": JobView}},
        summary="Queue a text-to-image job",
    )
    def submit(
        payload: body_model,  # type: ignore[valid-type]  # Txt2ImgRequest subclass
        request: Request,
        response: Response,
        owner: RateLimitedOwner,
        store: Store,
        idempotency_key: IdempotencyKey = None,
    ) -> JobView:
        """Validate and enqueue; the job JSON links to its status, events and images."""
        body: Txt2ImgRequest = payload
        if body.model is not None and body.model not in settings.models:
            served = ", ".join(settings.models)
            raise Problem(
                422,
                "validation",
                "Invalid request",
                f"model: unknown model {body.model!r}; served: {served}",
                errors=[{"field": "model", "message": f"unknown model; served: {served}"}],
            )
        job_id = str(uuid.uuid4())
        claim_key = ""
        if idempotency_key is not None:
            fingerprint = body_fingerprint(body)
            claim_key = keys.idempotency(owner, idempotency_key.strip('"'))
            claim = {"job_id": job_id, "body_sha256": fingerprint}
            if not store.redis.set(claim_key, json.dumps(claim), nx=True, ex=idem_ttl):
                raw = store.redis.get(claim_key) or b"{}"
                record = _replay(store, owner, json.loads(raw), fingerprint)
                response.status_code = status.HTTP_200_OK
                response.headers["Location"] = job_path(record.id)
                response.headers["Idempotent-Replayed"] = "true"
                return job_view(record, store.queue_position(record))
        resolved = body.resolve(settings.model_name)
        record = JobRecord(
            id=job_id,
            status=JobStatus.queued,
            owner=owner,
            request=resolved,
            created_at=time.time(),
            progress_total=resolved.steps,
        )
        try:
            store.create(record, max_queue=settings.max_queue, max_active=settings.active_job_limit)
        except ActiveLimitError as exc:
            if claim_key:
                store.redis.delete(claim_key)
            raise Problem(
                429,
                "concurrency-limited",
                "Too many active jobs",
                f"concurrency limit of {exc.limit} queued or running jobs per API key reached; "
                "retry when one finishes or cancel one",
                headers=retry_after,
            ) from None
        except QueueFullError:
            if claim_key:
                store.redis.delete(claim_key)
            raise Problem(
                503,
                "queue-full",
                "Queue full",
                f"the queue for model {resolved.model!r} is full; retry later",
                headers=retry_after,
            ) from None
        except Exception:
            if claim_key:
                _release(store, claim_key)
            raise
        request.app.state.metrics.submitted.labels(resolved.model).inc()
        logger.info("job %s queued model=%s steps=%d", job_id, resolved.model, resolved.steps)
        response.headers["Location"] = job_path(job_id)
        return job_view(record, store.queue_position(record))

    return router


def _release(store: JobStore, claim_key: str) -> None:
    """Best-effort removal of an Idempotency-Key claim whose job was never created."""
    try:
        store.redis.delete(claim_key)
    except Exception:  # noqa: BLE001 - Redis is likely down; the claim expires on its own
        logger.warning("could not release idempotency claim %s", claim_key)
