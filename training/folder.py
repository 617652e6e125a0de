"""A folder of captioned images: `name.png` (or .jpg/.jpeg/.webp) with its caption in `name.txt`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


def load_image(path: Path, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to (size, size, 3) uint8."""
    image = Image.open(path).convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def load_folder(folder: Path, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """All captioned images in `folder` (sorted by name): uint8 (N, size, size, 3) and captions."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    images, captions = [], []
    for path in paths:
        text = path.with_suffix(".txt")
        captions.append(text.read_text().strip() if text.exists() else "")
        images.append(load_image(path, size))
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(EXTENSIONS)}) in {folder}")
    return np.stack(images), captions
