"""POST /v1/txt2img: validate, enqueue, answer 202 with the job (Idempotency-Key aware)."""

# No `from __future__ import annotations`: the body type is built from settings at runtime and
# FastAPI must see the class object, not a string it cannot resolve.

import uuid

from fastapi import APIRouter, Response, status

from jobs.schema import request_model
from service.deps import SubmitDeps
from service.ratelimit import RateLimitedOwner
from service.settings import ApiSettings
from service.submission import SUBMIT_RESPONSES, IdempotencyKey, enqueue
from service.views import JobView


def build_router(settings: ApiSettings) -> APIRouter:
    """Router whose request model carries this deployment's bounds (visible in OpenAPI)."""
    body_model = request_model(settings.limits, settings.models)
    router = APIRouter(tags=["txt2img"])

    @router.post(
        "/v1/txt2img",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobView,
        response_model_by_alias=True,
        responses=SUBMIT_RESPONSES,
        summary="Queue a text-to-image job",
    )
    def submit(
        payload: body_model,  # type: ignore[valid-type]  # Txt2ImgRequest subclass
        response: Response,
        owner: RateLimitedOwner,
        deps: SubmitDeps,
        idempotency_key: IdempotencyKey = None,
    ) -> JobView:
        """Validate and enqueue; the job JSON links to its status, events and images."""
        return enqueue(payload, str(uuid.uuid4()), owner, idempotency_key, response, deps)

    return router
