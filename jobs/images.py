"""Input images of image-conditioned jobs, read safely and normalized the same way everywhere.

Pillow only (no torch): the API validates uploads with it before anything is queued, and the CLI
reads files with it. An init image becomes RGB (EXIF orientation applied, transparency composited
on white); a mask keeps its alpha channel when it has a non-opaque one (transparent = repaint, as
OpenAI's edits), else its luminance (white = repaint); both are resized to the job's size.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import cast

from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
SIZE_MULTIPLE = 8  # latent sizes: every supported VAE downsamples by a divisor of 8


class BadImage(ValueError):
    """An upload that is not an image we accept (the message says why, for a 422)."""


def decode(data: bytes, max_pixels: int) -> Image.Image:
    """Open an uploaded image without trusting it: known formats only, at most `max_pixels`
    (checked from the header, before decoding: no decompression bombs)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            if image.width * image.height > max_pixels:
                raise BadImage(
                    f"{image.width}x{image.height} = {image.width * image.height} pixels exceeds "
                    f"the maximum of {max_pixels}"
                )
            image.load()
    except BadImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImage(f"not a {', '.join(FORMATS)} image, or a decompression bomb") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"could not decode the image: {exc}") from None
    return ImageOps.exif_transpose(_eight_bit(image))


WIDE_GREY = ("I;16", "I;16B", "I;16L", "I")  # how Pillow opens a 16-bit greyscale PNG


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit greyscale image scaled to 8 bits ('L', or 'LA' when a tRNS grey level marks
    transparency): Pillow's own conversion clips at 255, so mid-grey would come out white."""
    if image.mode not in WIDE_GREY:
        return image
    wide = image.convert("I")  # int32, 0..65535
    grey = wide.point(lambda v: v / 257 + 0.5).convert("L")  # round(v * 255 / 65535)
    key = image.info.get("transparency")
    if not isinstance(key, int):
        return grey
    # alpha 0 exactly where the pixel equals the transparent grey level, else 255
    above = wide.point(lambda v: (v - key) * 255).convert("L")
    below = wide.point(lambda v: (key - v) * 255).convert("L")
    return Image.merge("LA", (grey, ImageChops.lighter(above, below)))


DATA_URL = re.compile(r"^data:image/[a-z0-9.+-]+;base64,", re.IGNORECASE)


def from_base64(value: str) -> bytes:
    """The bytes of a base64 string or a `data:image/...;base64,` URL (BadImage otherwise)."""
    text = DATA_URL.sub("", value.strip(), count=1)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadImage("not valid base64 (plain, or a data:image/...;base64, URL)") from None


def as_init_image(image: Image.Image) -> Image.Image:
    """RGB, transparent areas composited on white."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def as_mask(image: Image.Image) -> Image.Image:
    """'L' mask, 255 = repaint: from a non-opaque alpha channel (transparent = repaint), else
    from luminance (white = repaint)."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        alpha = image.convert("RGBA").getchannel("A")
        lowest, _ = cast(tuple[int, int], alpha.getextrema())  # one band: (min, max)
        if lowest < 255:
            return ImageOps.invert(alpha)
    return image.convert("L")


def job_size(image: Image.Image, width: int | None, height: int | None) -> tuple[int, int]:
    """The job's size: as given, else the image's rounded down to a multiple of 8."""
    w = width if width is not None else image.width - image.width % SIZE_MULTIPLE
    h = height if height is not None else image.height - image.height % SIZE_MULTIPLE
    if w < SIZE_MULTIPLE or h < SIZE_MULTIPLE:
        raise BadImage(f"image {image.width}x{image.height} is smaller than {SIZE_MULTIPLE}px")
    return w, h


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resized to `size` (Lanczos, as diffusers' image processor) unless it already is."""
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
