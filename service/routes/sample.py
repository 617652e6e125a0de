"""POST /v1/sample: images of the paper's models without text, unconditional (CelebA-HQ, FFHQ,
LSUN) or class-conditional (ImageNet). The class is resolved here, by index or name, against the
names the model's workers published; the size defaults to the model's own."""

# No `from __future__ import annotations`: the body type is built from settings at runtime.

import uuid

from fastapi import APIRouter, Response, status

from jobs.model_profile import ModelProfile, read_profile
from jobs.sample_request import SampleRequest, class_index
from jobs.schema import Limits, request_model
from jobs.store import JobStore
from service.deps import SubmitDeps
from service.ratelimit import RateLimitedOwner
from service.settings import ApiSettings
from service.submission import (
    SUBMIT_RESPONSES,
    IdempotencyKey,
    check_size,
    check_task,
    enqueue,
    invalid,
)
from service.views import JobView


def build_router(settings: ApiSettings) -> APIRouter:
    """The sampling route, with this deployment's bounds."""
    body_model = request_model(settings.limits, settings.models, SampleRequest)
    router = APIRouter(tags=["sample"])

    @router.post(
        "/v1/sample",
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobView,
        response_model_by_alias=True,
        responses=SUBMIT_RESPONSES,
        summary="Queue an unconditional or class-conditional sampling job",
    )
    def submit(
        payload: body_model,  # type: ignore[valid-type]  # SampleRequest subclass
        response: Response,
        owner: RateLimitedOwner,
        deps: SubmitDeps,
        idempotency_key: IdempotencyKey = None,
    ) -> JobView:
        """Resolve the class and the size, then enqueue; 202 with the job."""
        body: SampleRequest = payload
        _, store, _, _ = deps
        model = body.model or settings.model_name
        check_task(store, settings, model, SampleRequest.task)
        profile = read_profile(store.redis, model)
        resolved = {
            "task": SampleRequest.task,
            "prompt": "",
            "class_label": resolved_class(body, model, profile, store, settings),
            **resolved_size(body, profile, settings.limits),
        }
        return enqueue(body, str(uuid.uuid4()), owner, idempotency_key, response, deps,
                       resolved)  # fmt: skip

    return router


def resolved_class(
    body: SampleRequest, model: str, profile: ModelProfile, store: JobStore, settings: ApiSettings
) -> int | None:
    """The class index, or None for an unconditional model; 422 naming `class_label` otherwise."""
    names, label = profile.class_names, body.class_label
    described = store.fleet.model_tasks(settings.models).get(model) is not None
    if names is None and not described:  # no worker has started: indexes pass, names cannot
        if isinstance(label, str):
            raise invalid("class_label", f"class names of model {model!r} are known once one "
                                         "of its workers has started: give the index")  # fmt: skip
        return label
    if names is None:
        if label is not None:
            raise invalid("class_label", f"model {model!r} is unconditional: it takes no class")
        return None
    if label is None:
        raise invalid("class_label", f"model {model!r} is class-conditional: give a class "
                                     f"(an index 0..{len(names) - 1} or a name)")  # fmt: skip
    try:
        return class_index(label, names)
    except ValueError as exc:
        raise invalid("class_label", str(exc)) from None


def resolved_size(body: SampleRequest, profile: ModelProfile, limits: Limits) -> dict[str, int]:
    """Width and height: as given, else the model's native size (the limits' default when no
    worker said); 422 past the size bounds or the pixel and cost caps."""
    native = profile.native_size or limits.default_size
    width, height = body.width or native, body.height or native
    area = "width" if body.width is not None or body.height is None else "height"
    blame = {"width": "width", "height": "height", "area": area}
    check_size(limits, width, height, body.steps, body.num_images, blame)
    return {"width": width, "height": height}
