"""Encoding finished images (png with A1111 `parameters` chunk, jpeg, webp), sanity checks,
and reading an image task's stored inputs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from jobs.images import BadImage, as_init_image, as_mask, decode, fit
from jobs.schema import UPSCALE_FACTOR, ResolvedRequest, Task
from jobs.store import JobStore
from jobs.version import VERSION
from model.sampling.registry import sampler_entry

MAX_INPUT_PIXELS = 1 << 26  # the API bounded the upload by LDM_MAX_PIXELS already


def parameters_text(request: ResolvedRequest, index: int, model_name: str) -> str:
    """A1111-style generation parameters of image `index` (its seed is seed + index), with the
    sampler under A1111's name so its PNG Info tab reads ours."""
    entry = sampler_entry(request.sampler.value)
    sampler = entry.a1111_name(request.karras)
    eta = f", Eta: {request.eta:g}" if request.eta is not None and entry.takes_eta else ""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    strength = {
        Task.txt2img: "",
        Task.upscale: f", Noise level: {request.noise_level}",
        Task.sample: "" if request.class_label is None else f", Class: {request.class_label}",
    }.get(request.task, f", Denoising strength: {request.strength:g}")
    lines.append(
        f"Steps: {request.steps}, Sampler: {sampler}, CFG scale: {request.guidance_scale:g}, "
        f"Seed: {request.seed + index}, Size: {request.width}x{request.height}, "
        f"Model: {model_name}{eta}{strength}, Task: {request.task.value}, "
        f"Version: ldm-serve {VERSION}"  # A1111 writes its release here too: reproducibility
    )
    return "\n".join(lines)


def job_inputs(store: JobStore, job_id: str, request: ResolvedRequest) -> dict[str, Image.Image]:
    """An image task's stored uploads, decoded and sized for the job as the API checked them
    (init image RGB on white, mask from alpha or luminance); BadImage when one is gone."""
    names = ["init_image"] + (["mask_image"] if request.task == Task.inpaint else [])
    size = (request.width, request.height)
    if request.task == Task.upscale:  # the low-res image, 4x smaller than the output
        names, size = ["image"], (request.width // UPSCALE_FACTOR, request.height // UPSCALE_FACTOR)
    stored = store.get_inputs(job_id, names)
    inputs = {}
    for name in names:
        if name not in stored:
            raise BadImage(f"the job's {name} is no longer stored (expired)")
        image = decode(stored[name], max_pixels=MAX_INPUT_PIXELS)
        inputs[name] = fit(as_mask(image) if name == "mask_image" else as_init_image(image), size)
    return inputs


def encode(image: Image.Image, request: ResolvedRequest, index: int, model_name: str) -> bytes:
    """Encode one image in the request's output format."""
    buffer = io.BytesIO()
    fmt = request.output_format.value
    rgb = image.convert("RGB")
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters_text(request, index, model_name))
        rgb.save(buffer, format="PNG", pnginfo=info)
    elif fmt == "jpeg":
        rgb.save(buffer, format="JPEG", quality=95)
    else:
        rgb.save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()


def is_blank(image: Image.Image) -> bool:
    """True for a constant image: what NaN latents turn into after clamping and uint8 casting."""
    array = np.asarray(image.convert("RGB"))
    return bool(array.size == 0 or array.min() == array.max())
