"""The OpenAI Images API dialect: /v1/images/generations, /edits and /variations, answered
synchronously on top of the native queue (same keys, validation, batching and metrics).

Each request becomes a native job (txt2img, inpaint with the mask's transparent pixels as the
area to repaint, img2img with an empty prompt); the request waits for it up to LDM_SYNC_TIMEOUT,
then answers 504 naming the job, which can still be fetched natively. Errors come in OpenAI's
shape (service/errors.py), validation as 400, so the `openai` SDKs raise their usual exceptions.
ldm-serve's own fields (negative_prompt, seed, steps, guidance_scale, sampler) are accepted as
extra body fields; `background: transparent` is refused (it would come back opaque); other
OpenAI fields (quality, style, moderation, ...) are ignored.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at runtime.

import base64
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from jobs.image_requests import Img2ImgRequest, InpaintRequest, VariationRequest
from jobs.record import Usage
from jobs.schema import Txt2ImgRequest, request_model
from jobs.store import JobStore
from service.deps import SubmitDeps
from service.ratelimit import RateLimitedOwner
from service.routes.image_tasks import body_fields, parsed, prepared
from service.settings import ApiSettings
from service.signed_urls import app_url_key, signed_path
from service.submission import (
    dialect_field_names,
    enqueue,
    finished,
    images_of_finished,
    invalid,
)
from service.webhooks import with_header_webhook

NATIVE_EXTRAS = ("negative_prompt", "seed", "steps", "guidance_scale", "sampler", "model",
                 "output_format")  # fmt: skip


ACTIONS = ("generations", "edits", "variations")
# Served through service/errors.py's OpenAI rendering of every Problem on these paths.
OPENAI_PATHS = [f"/v1/images/{action}" for action in ACTIONS]


class ImageData(BaseModel):
    """One image: base64 bytes or the URL of the job's image route."""

    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class InputTokensDetails(BaseModel):
    """OpenAI's split of the input tokens."""

    text_tokens: int
    image_tokens: int


class ImagesUsage(BaseModel):
    """OpenAI's `usage`: prompt tokens, and latent positions of input and output images."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails


class ImagesResponse(BaseModel):
    """OpenAI's images response."""

    created: int
    data: list[ImageData]
    output_format: str | None = None
    size: str | None = None
    usage: ImagesUsage | None = None


def images_usage(usage: Usage | None) -> ImagesUsage | None:
    """The job's usage in OpenAI's shape."""
    if usage is None:
        return None
    inputs = usage.text_tokens + usage.image_tokens
    return ImagesUsage(
        input_tokens=inputs, output_tokens=usage.output_tokens,
        total_tokens=inputs + usage.output_tokens,
        input_tokens_details=InputTokensDetails(text_tokens=usage.text_tokens,
                                                image_tokens=usage.image_tokens),
    )  # fmt: skip


class OpenAIErrorBody(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """The body of every error on these routes: {"error": {...}}."""

    error: OpenAIErrorBody


ERRORS = {
    status: {"model": OpenAIError, "description": text}
    for status, text in (
        (400, "Invalid request (OpenAI's status for validation errors)"),
        (401, "Missing or wrong API key"),
        (413, "Body too large"),
        (429, "Rate limited"),
        (500, "The job failed"),
        (503, "Queue full or Redis unavailable"),
        (504, "The job did not finish within LDM_SYNC_TIMEOUT; the error names it"),
    )
}
TEXT = {"type": "string"}
OPTIONS = {
    "prompt": TEXT, "n": {"type": "integer", "minimum": 1, "maximum": 10},
    "size": {"type": "string", "pattern": "^([0-9]+x[0-9]+|auto)$"},
    "response_format": {"type": "string", "enum": ["b64_json", "url"]}, "user": TEXT,
    "model": TEXT, "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
    "negative_prompt": TEXT, "seed": {"type": "integer", "minimum": 0},
    "steps": {"type": "integer", "minimum": 1}, "guidance_scale": {"type": "number"},
    "sampler": TEXT, "background": {"type": "string", "enum": ["opaque", "auto"]},
}  # fmt: skip
FILE = {"type": "string", "format": "binary"}


def request_body(action: str) -> dict[str, Any]:
    """The OpenAPI request body: JSON for generations, multipart files for edits/variations."""
    if action == "generations":
        schema = {"type": "object", "required": ["prompt"], "properties": OPTIONS}
        return {"required": True, "content": {"application/json": {"schema": schema}}}
    files = {"image": FILE, **({"mask": FILE} if action == "edits" else {})}
    required = ["image", "prompt"] if action == "edits" else ["image"]
    schema = {"type": "object", "required": required, "properties": {**OPTIONS, **files}}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


# A 400 names the field the caller sent: OpenAI's name for what the native request calls otherwise.
OPENAI_NAMES = {"num_images": "n", "width": "size", "height": "size", "init_image": "image"}


def native_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """OpenAI request fields -> the native request's (n, size "WxH"; extras passed through)."""
    if fields.get("background") == "transparent":  # asked for, it would be silently opaque
        raise invalid("background", "transparent is not drawn here ('opaque', 'auto')")
    native = {name: fields[name] for name in NATIVE_EXTRAS if name in fields}
    if "prompt" in fields:
        native["prompt"] = fields["prompt"]
    if "n" in fields:
        native["num_images"] = fields["n"]
    size = fields.get("size")
    if size not in (None, "auto"):
        width, _, height = str(size).partition("x")
        if not (width.isdigit() and height.isdigit()):
            raise invalid("size", f"size must be 'WIDTHxHEIGHT' (e.g. 512x512), not {size!r}")
        native["width"], native["height"] = int(width), int(height)
    return native


async def images_of(
    request: Request,
    store: JobStore,
    job_id: str,
    timeout: float,
    url_key: bytes | None,
    url_ttl_s: int,
) -> tuple[list[ImageData], Usage | None]:
    """Wait for the job; its images as b64_json or (given the signing key) as signed URLs of the
    job's image route, which need no API key until they expire, and usage."""
    record = await finished(store, job_id, timeout)
    count = record.request.num_images
    if url_key is not None:
        base = str(request.base_url).rstrip("/")
        urls = [ImageData(url=base + signed_path(url_key, job_id, i, url_ttl_s))
                for i in range(count)]  # fmt: skip
        return urls, record.usage
    images = await images_of_finished(store, record)
    encoded = [ImageData(b64_json=base64.b64encode(data).decode()) for data in images]
    return encoded, record.usage


def build_router(settings: ApiSettings) -> APIRouter:
    """The three routes, with this deployment's bounds."""
    router = APIRouter(tags=["OpenAI Images API"])
    models = {
        "generations": request_model(settings.limits, settings.models),
        "edits": request_model(settings.limits, settings.models, InpaintRequest),
        "variations": request_model(settings.limits, settings.models, VariationRequest),
    }
    for action, model in models.items():
        add_route(router, settings, action, model)
    return router


def add_route(router: APIRouter, settings: ApiSettings, action: str, model: Any) -> None:
    @router.post(
        f"/v1/images/{action}",
        response_model=ImagesResponse,
        responses=ERRORS,  # type: ignore[arg-type]
        summary=f"OpenAI Images API: {action} (synchronous)",
        openapi_extra={"requestBody": request_body(action)},
    )
    async def images(
        request: Request,
        response: Response,
        owner: RateLimitedOwner,
        deps: SubmitDeps,
    ) -> ImagesResponse:
        fields = await body_fields(request)
        native = native_fields(fields)
        if action != "generations":
            native["init_image"] = fields.get("image", "")
        if action == "edits":  # no mask: the image's own transparency marks the area
            native["mask_image"] = fields.get("mask", fields.get("image", ""))
        names = OPENAI_NAMES | {"mask_image": "mask" if "mask" in fields else "image"}
        resolved: dict[str, object] | None = None
        uploads: dict[str, bytes] | None = None
        with dialect_field_names(names):
            body: Txt2ImgRequest = with_header_webhook(request, parsed(model, native), settings)
            if isinstance(body, Img2ImgRequest):
                resolved, uploads = await run_in_threadpool(prepared, body, settings.limits)
        store = deps[1]
        job = await run_in_threadpool(
            enqueue, body, str(uuid.uuid4()), owner, None, response, deps, resolved, uploads
        )
        url = fields.get("response_format", "b64_json") == "url"  # the key: before the wait
        key = await run_in_threadpool(app_url_key, request) if url else None
        data, usage = await images_of(request, store, job.id, settings.sync_timeout_s, key,
                                      settings.result_ttl)  # fmt: skip
        request_ = job.request
        return ImagesResponse(created=int(time.time()), data=data,
                              output_format=request_.output_format.value,
                              size=f"{request_.width}x{request_.height}",
                              usage=images_usage(usage))  # fmt: skip
