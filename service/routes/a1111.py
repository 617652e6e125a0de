"""The AUTOMATIC1111 dialect (`/sdapi/v1`): txt2img and img2img (with a mask: inpainting) answered
synchronously on the native queue, with A1111's field names, defaults and `{images, parameters,
info}` replies; progress and interrupt of the caller's latest job; models, samplers, options.

A1111's sampler names come from the workers' registry through Redis (the API imports no model
code). A1111 features that would change the image and are not run here (hires fix, face
restoration, tiling, variation seeds, scripts, clip skip) are refused when asked for (NOT_RUN);
other A1111 fields ldm-serve has no use for (mask_blur, resize_mode, ...) are ignored.
"""

# No `from __future__ import annotations`: FastAPI reads these signatures at runtime.

import base64
import io
import json
import time
import uuid
from typing import Any, cast

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from PIL import Image

from jobs import keys
from jobs.image_requests import Img2ImgRequest, InpaintRequest
from jobs.images import DATA_URL
from jobs.record import JobRecord
from jobs.schema import JobStatus, Txt2ImgRequest, request_model
from jobs.store import JobStore
from service.deps import Store, SubmitDeps
from service.openapi import problem_responses
from service.ratelimit import RateLimitedOwner
from service.routes.image_tasks import parsed, prepared
from service.settings import ApiSettings
from service.submission import (
    dialect_field_names,
    enqueue,
    finished,
    images_of_finished,
    invalid,
)
from service.webhooks import with_header_webhook

PREFIX = "/sdapi/v1"
DEFAULTS = {"steps": 20, "cfg_scale": 7.0, "width": 512, "height": 512, "seed": -1,
            "batch_size": 1, "n_iter": 1, "denoising_strength": 0.75}  # fmt: skip
LATEST_TTL_S = 24 * 3600


# A1111 features that change the image and that ldm-serve does not run: asked for (true, above
# 0, a name, a script's arguments), a 422 naming the field, as A1111 answers for a script it lacks;
# at A1111's defaults (what its clients send when the user asked for none) they pass.
NOT_RUN = {
    "enable_hr": "hires fix is not run here: generate, then POST /v1/upscale (an upscaler model) "
    "or img2img at the larger size",
    "restore_faces": "face restoration is not run here",
    "tiling": "seamless tiling is not run here",
    "subseed_strength": "variation seeds are not run here",
    "script_name": "no scripts are installed (GET /sdapi/v1/scripts)",
    "alwayson_scripts": "no always-on scripts (ControlNet, ...) are installed",
}


def refuse_what_is_not_run(body: dict[str, Any]) -> None:
    """A 422 for the first A1111 feature asked for that would change the image and is not run."""
    for field, why in NOT_RUN.items():
        if body.get(field):
            raise invalid(field, why)
    override = body.get("override_settings")
    skip = override.get("CLIP_stop_at_last_layers") if isinstance(override, dict) else None
    if skip not in (None, 1):
        raise invalid("override_settings.CLIP_stop_at_last_layers", "clip skip is not run here "
                      "(ldm-serve generate --clip-skip is)")  # fmt: skip


def native_fields(
    body: dict[str, Any], store: JobStore, owner: str, sampler_names: dict[str, str]
) -> dict[str, Any]:
    """A1111 request fields -> the native request's (`sampler_names`: A1111's -> ours)."""
    refuse_what_is_not_run(body)
    a = {**DEFAULTS, **{k: v for k, v in body.items() if v is not None}}
    batch, rounds = a["batch_size"], a["n_iter"]
    fields: dict[str, Any] = {
        "prompt": a.get("prompt", ""), "negative_prompt": a.get("negative_prompt", ""),
        "steps": a["steps"], "guidance_scale": as_float(a["cfg_scale"]),
        "width": a["width"], "height": a["height"],
        "num_images": batch * rounds if isinstance(batch, int) and isinstance(rounds, int)
        else batch,
    }  # fmt: skip
    if a["seed"] != -1:
        fields["seed"] = a["seed"]
    if "eta" in body and body["eta"] is not None:
        fields["eta"] = body["eta"]
    name = a.get("sampler_name") or a.get("sampler_index")
    if name:
        ours = sampler_names.get(str(name))
        if ours is None:
            raise invalid("sampler_name", f"unknown sampler {name!r}; GET {PREFIX}/samplers")
        sampler, _, karras = ours.partition(" ")
        fields["sampler"], fields["karras"] = sampler, bool(karras)
        if str(a.get("scheduler", "")).lower() == "karras":
            fields["karras"] = True
    override = body.get("override_settings") or {}
    model = override.get("sd_model_checkpoint") if isinstance(override, dict) else None
    chosen = store.redis.get(keys.a1111_model(owner))
    model = model or (chosen.decode() if isinstance(chosen, bytes) else chosen)
    if model:
        fields["model"] = model
    return fields


# A 422 names the field the caller sent: A1111's name for what the native request calls otherwise.
A1111_NAMES = {"guidance_scale": "cfg_scale", "strength": "denoising_strength",
               "num_images": "batch_size", "sampler": "sampler_name",
               "init_image": "init_images", "mask_image": "mask",
               "model": "override_settings.sd_model_checkpoint"}  # fmt: skip


def as_float(value: Any) -> Any:
    """A JSON integer where a float is meant (cfg_scale: 7); anything else as sent."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def image_fields(body: dict[str, Any]) -> dict[str, Any]:
    """img2img's init image and mask (base64, maybe data: URLs) and its strength."""
    images = body.get("init_images") or []
    if not isinstance(images, list) or not images or not isinstance(images[0], str):
        raise invalid("init_images", "a list with one base64 image is required")
    if body.get("inpainting_mask_invert"):
        raise invalid("inpainting_mask_invert", "not supported: invert the mask yourself")
    strength = as_float(body.get("denoising_strength", 0.75))
    fields: dict[str, Any] = {"init_image": DATA_URL.sub("", images[0]), "strength": strength}
    if body.get("mask"):
        fields["mask_image"] = DATA_URL.sub("", str(body["mask"]))
    return fields


def a1111_sampler(record: JobRecord, names: dict[str, str]) -> str | None:
    """A1111's name for the sampler the job ran ('DPM++ 2M Karras'), as its info reports it."""
    ran = f"{record.request.sampler.value}{' karras' if record.request.karras else ''}"
    return next((name for name, ours in sorted(names.items()) if ours == ran), None)


def reply(record: JobRecord, images: list[bytes], body: dict[str, Any],
          sampler_names: dict[str, str]) -> dict[str, Any]:  # fmt: skip
    """A1111's `{images, parameters, info}`; info is a JSON string, as A1111 sends it."""
    r = record.request
    infotexts = [Image.open(io.BytesIO(data)).info.get("parameters", "") for data in images]
    seeds = [r.seed + i for i in range(r.num_images)]
    info = {
        "prompt": r.prompt, "all_prompts": [r.prompt] * r.num_images,
        "negative_prompt": r.negative_prompt, "seed": r.seed, "all_seeds": seeds,
        "subseed": -1, "all_subseeds": [-1] * r.num_images, "width": r.width, "height": r.height,
        "sampler_name": a1111_sampler(record, sampler_names), "cfg_scale": r.guidance_scale,
        "steps": r.steps, "batch_size": r.num_images, "sd_model_name": r.model,
        "denoising_strength": r.strength if r.task.value != "txt2img" else None,
        "infotexts": infotexts, "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "job_id": record.id,
    }  # fmt: skip
    encoded = [base64.b64encode(data).decode() for data in images]
    return {"images": encoded, "parameters": body, "info": json.dumps(info)}


def build_router(settings: ApiSettings) -> APIRouter:
    """The /sdapi/v1 routes, with this deployment's bounds."""
    errors = problem_responses(400, 401, 413, 422, 429, 500, 503, 504)
    router = APIRouter(prefix=PREFIX, tags=["AUTOMATIC1111 API"], responses=errors)
    txt2img_model = request_model(settings.limits, settings.models)
    inpaint_model = request_model(settings.limits, settings.models, InpaintRequest)
    img2img_model = request_model(settings.limits, settings.models, Img2ImgRequest)

    async def generate(request: Request, response: Response, owner: str, deps: Any,
                       task: str) -> dict[str, Any]:  # fmt: skip
        store: JobStore = deps[1]
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise invalid("body", "not JSON") from None
        if not isinstance(body, dict):
            raise invalid("body", "must be a JSON object")
        names = await run_in_threadpool(store.fleet.sampler_names)  # read once: fields, reply
        fields = await run_in_threadpool(native_fields, body, store, owner, names)
        resolved = uploads = None
        if task == "txt2img":
            payload: Txt2ImgRequest = parsed(txt2img_model, fields)
        else:
            fields.update(image_fields(body))
            model = inpaint_model if "mask_image" in fields else img2img_model
            image_payload = cast(Img2ImgRequest, parsed(model, fields))
            resolved, uploads = await run_in_threadpool(prepared, image_payload, settings.limits)
            payload = image_payload
        payload = with_header_webhook(request, payload, settings)
        job = await run_in_threadpool(enqueue, payload, str(uuid.uuid4()), owner, None, response,
                                      deps, resolved, uploads)  # fmt: skip
        latest_key = keys.a1111_latest(owner)  # a blocking call: off the event loop
        await run_in_threadpool(store.redis.set, latest_key, job.id, ex=LATEST_TTL_S)
        response.status_code = 200
        record = await finished(store, job.id, settings.sync_timeout_s)
        return reply(record, await images_of_finished(store, record), body, names)

    @router.post("/txt2img", summary="A1111 txt2img (synchronous)")
    async def txt2img(request: Request, response: Response, owner: RateLimitedOwner,
                      deps: SubmitDeps) -> dict[str, Any]:  # fmt: skip
        with dialect_field_names(A1111_NAMES):
            return await generate(request, response, owner, deps, "txt2img")

    @router.post("/img2img", summary="A1111 img2img; with `mask`, inpainting (synchronous)")
    async def img2img(request: Request, response: Response, owner: RateLimitedOwner,
                      deps: SubmitDeps) -> dict[str, Any]:  # fmt: skip
        with dialect_field_names(A1111_NAMES):
            return await generate(request, response, owner, deps, "img2img")

    add_status_routes(router, settings)
    return router


def latest(store: JobStore, owner: str) -> JobRecord | None:
    job_id = store.redis.get(keys.a1111_latest(owner))
    if job_id is None:
        return None
    return store.get(job_id.decode() if isinstance(job_id, bytes) else job_id)


def add_status_routes(router: APIRouter, settings: ApiSettings) -> None:
    """progress, interrupt, sd-models, samplers, options."""

    @router.get("/progress", summary="Progress of the caller's latest A1111 job")
    def progress(owner: RateLimitedOwner, store: Store) -> dict[str, Any]:
        record = latest(store, owner)
        if record is None or record.status.terminal:
            canceled = record is not None and record.status == JobStatus.canceled
            state = {"job_count": 0, "sampling_step": 0, "sampling_steps": 0,
                     "interrupted": canceled, "job": record.id if record else ""}  # fmt: skip
            return {"progress": 0.0, "eta_relative": 0.0, "current_image": None,
                    "textinfo": None, "state": state}  # fmt: skip
        fraction = record.progress_step / max(record.progress_total, 1)
        elapsed = time.time() - (record.started_at or time.time())
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        return {"progress": fraction, "eta_relative": eta, "current_image": None,
                "textinfo": record.status.value,
                "state": {"job_count": 1, "sampling_step": record.progress_step,
                          "sampling_steps": record.progress_total, "interrupted": False,
                          "job": record.id}}  # fmt: skip

    @router.post("/interrupt", summary="Cancel the caller's latest A1111 job")
    def interrupt(owner: RateLimitedOwner, store: Store) -> dict[str, Any]:
        record = latest(store, owner)
        if record is not None and not record.status.terminal:
            store.request_cancel(record.id)
        return {}

    @router.get("/sd-models", summary="Served models, as A1111 lists checkpoints")
    def sd_models(owner: RateLimitedOwner) -> list[dict[str, Any]]:
        return [{"title": name, "model_name": name, "hash": None, "sha256": None,
                 "filename": name, "config": None} for name in settings.models]  # fmt: skip

    @router.get("/samplers", summary="Samplers under A1111's names")
    def samplers(owner: RateLimitedOwner, store: Store) -> list[dict[str, Any]]:
        return [{"name": name, "aliases": [ours], "options": {}}
                for name, ours in sorted(store.fleet.sampler_names().items())]  # fmt: skip

    @router.get("/scripts", summary="Installed scripts: none (clients probe for extensions)")
    def scripts(owner: RateLimitedOwner) -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @router.get("/options", summary="The caller's A1111 options (sd_model_checkpoint)")
    def get_options(owner: RateLimitedOwner, store: Store) -> dict[str, Any]:
        chosen = store.redis.get(keys.a1111_model(owner))
        model = chosen.decode() if isinstance(chosen, bytes) else chosen
        return {"sd_model_checkpoint": model or settings.model_name}

    @router.post("/options", summary="Choose the caller's model (sd_model_checkpoint)")
    def set_options(options: dict[str, Any], owner: RateLimitedOwner,
                    store: Store) -> dict[str, Any]:  # fmt: skip
        model = options.get("sd_model_checkpoint")
        if model is not None:
            if model not in settings.models:
                raise invalid("sd_model_checkpoint", f"not a served model: {settings.models}")
            store.redis.set(keys.a1111_model(owner), model)
        return {}
