"""POST /v1/img2img and /v1/inpaint: image-conditioned jobs, as JSON (images in base64 or data:
URLs) or multipart/form-data (images as files). Uploads are decoded and checked here, before
anything is queued, and stored beside the job record for the worker (jobs/store.py)."""

# No `from __future__ import annotations`: FastAPI reads these signatures at runtime.

import base64
import json
import uuid
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from PIL.Image import Image
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from jobs.image_requests import Img2ImgRequest, InpaintRequest, UpscaleRequest
from jobs.images import BadImage, as_mask, decode, from_base64, job_size
from jobs.schema import IMAGE_FIELDS, Limits, Txt2ImgRequest, request_model
from service.deps import SubmitDeps
from service.ratelimit import RateLimitedOwner
from service.settings import ApiSettings
from service.submission import (
    SUBMIT_RESPONSES,
    IdempotencyKey,
    check_size,
    enqueue,
    invalid,
)
from service.views import JobView

Req = TypeVar("Req", bound=Txt2ImgRequest)
JSON_TYPES = ("application/json",)
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# Form fields that are text as sent; every other form field is read as a JSON value ("7.5").
TEXT_FIELDS = {"prompt", "negative_prompt", "sampler", "output_format", "model", *IMAGE_FIELDS}


async def body_fields(request: Request) -> dict[str, Any]:
    """The request's fields: a JSON object, or form fields with files as base64 text."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in FORM_TYPES:
        fields: dict[str, Any] = {}
        async with request.form(max_files=len(IMAGE_FIELDS), max_fields=64) as form:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    fields[name] = base64.b64encode(await value.read()).decode()
                elif name in TEXT_FIELDS:
                    fields[name] = value
                else:
                    try:
                        fields[name] = json.loads(value)
                    except ValueError:
                        fields[name] = value  # the model says why it is wrong
        return fields
    if media not in JSON_TYPES and media:
        raise invalid("body", f"unsupported content type {media!r}: use JSON or multipart")
    try:
        data = json.loads(await request.body())
    except ValueError:
        raise RequestValidationError([{"loc": ("body",), "msg": "not JSON",
                                       "type": "json_invalid"}]) from None  # fmt: skip
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    return data


def parsed(model: type[Req], fields: dict[str, Any]) -> Req:
    """The body as `model`, or a 422 naming each bad field."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def prepared(
    body: Img2ImgRequest | UpscaleRequest, limits: Limits
) -> tuple[dict[str, object], dict[str, bytes]]:
    """Decode and check the uploads; the job's task, size and strength, and the bytes to store."""
    uploads: dict[str, bytes] = {}
    images = {}
    for name in sorted(IMAGE_FIELDS & set(type(body).model_fields)):
        try:
            uploads[name] = from_base64(getattr(body, name))
            images[name] = decode(uploads[name], max_pixels=limits.max_pixels)
        except BadImage as exc:
            raise invalid(name, str(exc)) from None
    source = "image" if isinstance(body, UpscaleRequest) else "init_image"
    width, height = output_size(body, images[source], source)
    blame = {field: field if getattr(body, field) is not None else source
             for field in ("width", "height")}  # what set each side  # fmt: skip
    blame["area"] = blame["width"]
    check_size(limits, width, height, body.steps, body.num_images, blame)
    if "mask_image" in images:
        init, mask = images["init_image"], as_mask(images["mask_image"])
        if mask.size != init.size:
            raise invalid("mask_image", f"mask is {mask.size[0]}x{mask.size[1]}, the init image "
                                        f"{init.size[0]}x{init.size[1]}")  # fmt: skip
    # keep_unmasked (inpainting) and noise_level (upscaling) carry over from the request itself
    resolved: dict[str, object] = {"task": body.task, "width": width, "height": height}
    if isinstance(body, Img2ImgRequest):
        resolved["strength"] = body.strength
    return resolved, uploads


def output_size(
    body: Img2ImgRequest | UpscaleRequest, image: Image, source: str
) -> tuple[int, int]:
    """The job's output size: as given, else the image's rounded down to 8 (x4 to upscale)."""
    scale = body.scale if isinstance(body, UpscaleRequest) else 1
    given = {}
    for field in ("width", "height"):
        value = getattr(body, field)
        if value is not None and value % (8 * scale):
            raise invalid(field, f"must be a multiple of {8 * scale} to upscale x{scale}")
        given[field] = None if value is None else value // scale
    try:
        width, height = job_size(image, given["width"], given["height"])
    except BadImage as exc:
        raise invalid(source, str(exc)) from None
    return width * scale, height * scale


ROUTES: list[tuple[str, type[Img2ImgRequest] | type[UpscaleRequest], str]] = [
    ("/v1/img2img", Img2ImgRequest, "Queue an image-to-image (SDEdit) job"),
    ("/v1/inpaint", InpaintRequest, "Queue an inpainting job"),
    ("/v1/upscale", UpscaleRequest, "Queue a x4 super-resolution job (an upscaler model's)"),
]
IMAGE_TASK_PATHS = [path for path, _, _ in ROUTES]


def build_router(settings: ApiSettings) -> APIRouter:
    """The image-conditioned routes, with this deployment's bounds."""
    router = APIRouter(tags=["image tasks"])
    for path, base, summary in ROUTES:
        model = request_model(settings.limits, settings.models, base)
        add_route(router, settings, path, model, summary)
    return router


def add_route(
    router: APIRouter, settings: ApiSettings, path: str, model: Any, summary: str
) -> None:
    schema = model.model_json_schema()
    form = {**schema, "properties": {**schema["properties"]}}
    for name in IMAGE_FIELDS & set(form["properties"]):
        form["properties"][name] = {"type": "string", "format": "binary"}
    body = {
        "required": True,
        "content": {"application/json": {"schema": schema},
                    "multipart/form-data": {"schema": form}},
    }  # fmt: skip

    @router.post(
        path,
        status_code=status.HTTP_202_ACCEPTED,
        response_model=JobView,
        response_model_by_alias=True,
        responses=SUBMIT_RESPONSES,
        summary=summary,
        openapi_extra={"requestBody": body},
    )
    async def submit(
        request: Request,
        response: Response,
        owner: RateLimitedOwner,
        deps: SubmitDeps,
        idempotency_key: IdempotencyKey = None,
    ) -> JobView:
        """Validate the fields and the images, then enqueue; 202 with the job."""
        payload = parsed(model, await body_fields(request))
        resolved, uploads = await run_in_threadpool(prepared, payload, settings.limits)
        return await run_in_threadpool(
            enqueue, payload, str(uuid.uuid4()), owner, idempotency_key, response, deps,
            resolved, uploads,
        )  # fmt: skip
