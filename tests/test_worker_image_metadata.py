"""Every output format carries the generation parameters where AUTOMATIC1111 writes and reads them:
PNG's `parameters` text chunk, JPEG's and WebP's EXIF UserComment (read here with piexif, A1111's
own reader), so a downloaded JPEG can be reproduced as a PNG can."""

from __future__ import annotations

import io

import piexif
import piexif.helper
import pytest
from PIL import Image

from jobs.schema import ResolvedRequest
from workers.images import encode, parameters_text

REQUEST = {
    "prompt": "a red circle, étoile ✓", "negative_prompt": "blue", "width": 64, "height": 64,
    "steps": 5, "guidance_scale": 3.0, "sampler": "dpmpp_2m", "eta": None, "karras": True,
    "seed": 7, "num_images": 2, "model": "default", "task": "txt2img", "strength": 1.0,
    "keep_unmasked": False, "noise_level": 20, "class_label": None,
}  # fmt: skip


def read_parameters(data: bytes) -> str:
    """The parameters as A1111's PNG Info tab reads them from an image file."""
    image = Image.open(io.BytesIO(data))
    if image.format == "PNG":
        return str(image.text["parameters"])
    comment = piexif.load(image.info["exif"])["Exif"][piexif.ExifIFD.UserComment]
    return str(piexif.helper.UserComment.load(comment))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_each_format_carries_its_images_parameters(fmt: str) -> None:
    request = ResolvedRequest.model_validate({**REQUEST, "output_format": fmt})
    data = encode(Image.new("RGB", (64, 64), "red"), request, 1, "default")
    assert Image.open(io.BytesIO(data)).format == fmt.upper()
    text = read_parameters(data)
    assert text == parameters_text(request, 1, "default")
    assert text.startswith("a red circle, étoile ✓\nNegative prompt: blue\nSteps: 5, ")
    assert "Sampler: DPM++ 2M Karras, CFG scale: 3, Seed: 8, Size: 64x64" in text
