"""Input images are read without trusting them and normalized one way (jobs/images.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jobs.images import BadImage, as_init_image, as_mask, decode, fit, job_size


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_known_formats_decode_and_others_are_refused() -> None:
    red = Image.new("RGB", (16, 8), (255, 0, 0))
    for fmt in ("PNG", "JPEG", "WEBP"):
        assert decode(encoded(red, fmt), max_pixels=1000).size == (16, 8)
    with pytest.raises(BadImage, match="not a PNG"):
        decode(encoded(red, "BMP"), max_pixels=1000)
    with pytest.raises(BadImage, match="not a PNG"):
        decode(b"GIF89a not really", max_pixels=1000)
    with pytest.raises(BadImage):
        decode(encoded(red)[:40], max_pixels=1000)  # truncated


def test_pixel_bound_is_checked_from_the_header_before_decoding() -> None:
    # A one-colour PNG of 16 M pixels compresses to kilobytes: refused from its header alone.
    header_only = encoded(Image.new("L", (4000, 4000)))
    with pytest.raises(BadImage, match="exceeds the maximum"):
        decode(header_only, max_pixels=1024 * 1024)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    assert decode(encoded(image, "JPEG", exif=exif), max_pixels=1000).size == (10, 20)


def test_init_image_alpha_is_composited_on_white_and_mask_alpha_means_repaint() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # opaque red left half, transparent right half
    image = Image.fromarray(rgba, "RGBA")
    init = np.asarray(as_init_image(image))
    assert (init[:, :4] == (255, 0, 0)).all() and (init[:, 4:] == 255).all()
    mask = np.asarray(as_mask(image))
    assert (mask[:, 4:] == 255).all() and (mask[:, :4] == 0).all()  # transparent = repaint
    opaque = Image.fromarray(np.full((8, 8, 4), 255, dtype=np.uint8), "RGBA")
    assert np.asarray(as_mask(opaque)).min() == 255  # opaque: luminance (white = repaint)


def test_sixteen_bit_grey_is_scaled_not_clipped_and_its_trns_level_is_transparent() -> None:
    levels = np.array([[0, 128, 257, 32768], [45000, 65535, 20000, 65534]], dtype=np.uint16)
    eight = np.round(levels / 257).astype(np.uint8)  # 0 0 1 128 / 175 255 78 255
    grey = decode(encoded(Image.fromarray(levels)), max_pixels=1000)
    assert np.array_equal(np.asarray(as_init_image(grey))[..., 1], eight)
    assert np.array_equal(np.asarray(as_mask(grey)), eight)
    keyed = decode(encoded(Image.fromarray(levels), transparency=20000), max_pixels=1000)
    repaint = np.asarray(as_mask(keyed))  # only the tRNS grey level is transparent
    assert repaint[1, 2] == 255 and np.delete(repaint.ravel(), 6).max() == 0
    init = np.asarray(as_init_image(keyed))[..., 0]
    assert init[1, 2] == 255 and np.array_equal(np.delete(init.ravel(), 6), np.delete(eight, 6))


def test_job_size_rounds_down_to_eight_and_fit_resizes() -> None:
    image = Image.new("RGB", (67, 45))
    assert job_size(image, None, None) == (64, 40)
    assert job_size(image, 32, None) == (32, 40)
    assert fit(image, (64, 40)).size == (64, 40)
    with pytest.raises(BadImage):
        job_size(Image.new("RGB", (7, 64)), None, None)
