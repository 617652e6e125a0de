"""A programmatic prompt-adherence judge for shapes images, written from the dataset spec."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from training.shapes import BACKGROUNDS, COLOURS, CORNER, IMAGE_SIZE, POSITIONS, Sample

BACKGROUND_DISTANCE = 60.0  # RGB distance from the background beyond which a pixel is "object"
PALETTE_DISTANCE = 90.0  # an object pixel must lie this close to a palette colour to count
MIN_PIXELS = 24  # a small circle covers ~200 px; fewer than this is noise, not an object
SQUARE_FILL, CIRCLE_FILL = 0.89, 0.64  # bbox fill: square 1.0, circle pi/4 = 0.785, triangle 0.5


@dataclass(frozen=True)
class Found:
    """One object the judge found: its palette colour, shape and nearest position anchor."""

    colour: str
    shape: str
    position: str
    pixels: int
    cx: float
    cy: float


@dataclass
class Verdict:
    """Per-attribute pass/fail for one image against its sample's named attributes."""

    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def _palette(names: dict[str, tuple[int, int, int]]) -> np.ndarray:
    return np.array(list(names.values()), dtype=np.float32)  # (K, 3)


def background_of(image: np.ndarray) -> str:
    """Nearest background colour to the median of the four corner patches."""
    c = CORNER
    patches = [image[:c, :c], image[:c, -c:], image[-c:, :c], image[-c:, -c:]]
    median = np.median(np.concatenate([p.reshape(-1, 3) for p in patches]), axis=0)
    distances = np.linalg.norm(_palette(BACKGROUNDS) - median, axis=1)
    return list(BACKGROUNDS)[int(distances.argmin())]


def shape_of(mask: np.ndarray) -> tuple[str, float, float]:
    """Shape from how the mask fills its bounding box, plus the shape's centre (x, y)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    fill = len(xs) / float((x1 - x0) * (y1 - y0))
    shape = "square" if fill >= SQUARE_FILL else "circle" if fill >= CIRCLE_FILL else "triangle"
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    if shape == "triangle":  # a triangle's centroid sits h/6 below its bounding-box centre
        cy -= (y1 - y0) / 6.0
    return shape, float(cx), float(cy)


def position_of(cx: float, cy: float) -> str:
    """Nearest position anchor to a centre."""
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - cx) ** 2 + (POSITIONS[p][1] - cy) ** 2)


def _neighbours(mask: np.ndarray) -> list[np.ndarray]:
    """The mask shifted by one pixel in each of the four directions (zero-padded)."""
    padded = np.pad(mask, 1)
    return [padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]]


def clean(mask: np.ndarray) -> np.ndarray:
    """Drop 1-px fringes (edge pixels blended towards another palette colour): open the mask."""
    core = mask & np.logical_and.reduce(_neighbours(mask))
    return mask & (core | np.logical_or.reduce(_neighbours(core)))


def find_objects(image: np.ndarray) -> tuple[str, list[Found]]:
    """Background name and the objects found, largest first (one per palette colour)."""
    background = background_of(image)
    pixels = image.astype(np.float32)  # (64, 64, 3)
    far = np.linalg.norm(pixels - np.array(BACKGROUNDS[background]), axis=-1) > BACKGROUND_DISTANCE
    distances = np.linalg.norm(pixels[..., None, :] - _palette(COLOURS), axis=-1)  # (64, 64, K)
    nearest = distances.argmin(-1)
    close = distances.min(-1) < PALETTE_DISTANCE
    found = []
    for k, colour in enumerate(COLOURS):
        mask = clean(far & close & (nearest == k))
        if mask.sum() < MIN_PIXELS:
            continue
        shape, cx, cy = shape_of(mask)
        found.append(Found(colour, shape, position_of(cx, cy), int(mask.sum()), cx, cy))
    return background, sorted(found, key=lambda f: -f.pixels)


def judge(image: np.ndarray, sample: Sample) -> Verdict:
    """Check each attribute the caption names (one object) or the colours' sides (two objects)."""
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3), image.shape
    background, found = find_objects(image)
    verdict = Verdict()
    if "background" in sample.named:
        verdict.checks["background"] = background == sample.scene.background
    if len(sample.scene.objects) == 1:
        want = sample.scene.objects[0]
        main = found[0] if found else None
        verdict.checks["count"] = len(found) == 1
        verdict.checks["colour"] = main is not None and main.colour == want.colour
        verdict.checks["shape"] = main is not None and main.shape == want.shape
        if "position" in sample.named:
            verdict.checks["position"] = main is not None and main.position == want.position
        return verdict
    by_colour = {f.colour: f for f in found}
    for side, want in zip(("left", "right"), sample.scene.objects, strict=True):
        got = by_colour.get(want.colour)
        on_side = got is not None and (got.cx < 32) == (side == "left")
        verdict.checks[f"{side}_colour"] = on_side
        verdict.checks[f"{side}_shape"] = on_side and got is not None and got.shape == want.shape
    return verdict


def adherence(images: Sequence[np.ndarray], samples: Sequence[Sample]) -> dict[str, float]:
    """Issue 5's adherence metrics (fractions in [0, 1]) over paired images and samples."""
    one = [judge(i, s) for i, s in zip(images, samples, strict=True) if len(s.scene.objects) == 1]
    two = [judge(i, s) for i, s in zip(images, samples, strict=True) if len(s.scene.objects) == 2]

    def rate(verdicts: list[Verdict], keys: tuple[str, ...]) -> float:
        scored = [v for v in verdicts if all(k in v.checks for k in keys)]
        return sum(all(v.checks[k] for k in keys) for v in scored) / max(len(scored), 1)

    return {
        "one_colour": rate(one, ("colour",)),
        "one_shape": rate(one, ("shape",)),
        "one_position": rate(one, ("position",)),
        "one_all": rate(one, ("colour", "shape", "position")),
        "one_single_object": rate(one, ("count",)),
        "two_sides": rate(two, ("left_colour", "right_colour")),
        "two_shapes": rate(two, ("left_shape", "right_shape")),
        "background": rate(one + two, ("background",)),
        "num_one": float(len(one)),
        "num_two": float(len(two)),
    }


THRESHOLDS = {
    "one_colour": 0.95,
    "one_shape": 0.90,
    "one_position": 0.90,
    "one_all": 0.85,
    "two_sides": 0.75,
}
