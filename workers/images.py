"""Encoding finished images (png with A1111 `parameters` chunk, jpeg, webp), sanity checks,
and reading an image task's stored inputs."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image, PngImagePlugin

from jobs.images import BadImage, as_init_image, as_mask, decode, fit
from jobs.schema import UPSCALE_FACTOR, ResolvedRequest, Task
from jobs.store import JobStore
from jobs.version import VERSION
from model.sampling.registry import sampler_entry

MAX_INPUT_PIXELS = 1 << 26  # the API bounded the upload by LDM_MAX_PIXELS already
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286  # EXIF 2.3: the Exif sub-IFD and its UserComment tag
LONG, UNDEFINED = 4, 7  # TIFF 6.0 field types


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
    else:  # the same text as EXIF UserComment, where A1111 writes (and its PNG Info reads) it
        exif = exif_user_comment(parameters_text(request, index, model_name))
        rgb.save(buffer, format=fmt.upper(), exif=exif, quality=95 if fmt == "jpeg" else 90)
    return buffer.getvalue()


def exif_user_comment(text: str) -> bytes:
    """An EXIF block holding only a UserComment (EXIF 2.3, 4.6.5: type UNDEFINED, "UNICODE\0" then
    UTF-16; Pillow would write it as BYTE, which A1111's piexif reader cannot read)."""
    comment = b"UNICODE\0" + text.encode("utf-16-be")
    # little-endian TIFF: header (8 B), IFD0 (18 B: a pointer to the Exif IFD at 26), the Exif
    # IFD (18 B: UserComment, its data at 44), then the data
    ifd0 = struct.pack("<HHHII", 1, EXIF_IFD, LONG, 1, 26) + b"\0\0\0\0"
    exif_ifd = struct.pack("<HHHII", 1, USER_COMMENT, UNDEFINED, len(comment), 44) + b"\0\0\0\0"
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd0 + exif_ifd + comment



def is_blank(image: Image.Image) -> bool:
    """True for a constant image: what NaN latents turn into after clamping and uint8 casting."""
    array = np.asarray(image.convert("RGB"))
    return bool(array.size == 0 or array.min() == array.max())
