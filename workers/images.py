"""Encoding finished images (png with A1111 `parameters` chunk, jpeg, webp) and sanity checks."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from jobs.schema import ResolvedRequest
from model.sampling.registry import sampler_entry


def parameters_text(request: ResolvedRequest, index: int, model_name: str) -> str:
    """A1111-style generation parameters of image `index` (its seed is seed + index), with the
    sampler under A1111's name so its PNG Info tab reads ours."""
    entry = sampler_entry(request.sampler.value)
    sampler = entry.a1111_name(request.karras)
    eta = f", Eta: {request.eta:g}" if request.eta is not None and entry.takes_eta else ""
    lines = [request.prompt]
    if request.negative_prompt:
        lines.append(f"Negative prompt: {request.negative_prompt}")
    lines.append(
        f"Steps: {request.steps}, Sampler: {sampler}, CFG scale: {request.guidance_scale:g}, "
        f"Seed: {request.seed + index}, Size: {request.width}x{request.height}, "
        f"Model: {model_name}{eta}"
    )
    return "\n".join(lines)


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
