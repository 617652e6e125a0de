"""The captioned "shapes" dataset of issue 5: flat-colour 64x64 scenes, deterministic by seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 64
CORNER = 4  # objects never cover the 4x4 corner patches, so the judge reads the background there
JITTER = 2  # pixels of jitter around each anchor
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (16, 16, 16),
    "gray": (128, 128, 128),
}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 170, 68),
    "blue": (37, 99, 235),
    "yellow": (250, 204, 21),
    "purple": (147, 51, 234),
    "orange": (249, 115, 22),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, int] = {"small": 16, "large": 30}  # pixels across
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (16, 32),
    "right": (48, 32),
    "top": (32, 16),
    "bottom": (32, 48),
    "center": (32, 32),
}
ONE_OBJECT_FRACTION = 0.55


@dataclass(frozen=True)
class ShapeObject:
    """One flat-colour object; (cx, cy) is its bounding-box centre in pixels."""

    colour: str
    shape: str
    size: str
    position: str
    cx: int
    cy: int


@dataclass(frozen=True)
class Scene:
    """A background and one object, or two objects of different colours (left, then right)."""

    background: str
    objects: tuple[ShapeObject, ...]


@dataclass(frozen=True)
class Sample:
    """A scene with a caption and the attributes that caption names (ground truth for the judge)."""

    scene: Scene
    caption: str
    named: frozenset[str]  # subset of {"colour", "shape", "size", "position", "background"}


def _place(rng: random.Random, position: str, size: str, pair_side: str | None) -> tuple[int, int]:
    """Jittered centre for an object, clamped inside the image (and inside its half for pairs)."""
    half = SIZES[size] // 2
    ax, ay = POSITIONS[position]
    cx = ax + rng.randint(-JITTER, JITTER)
    cy = ay + rng.randint(-JITTER, JITTER)
    low, high = half + 1, IMAGE_SIZE - 1 - half
    cx, cy = min(max(cx, low), high), min(max(cy, low), high)
    if pair_side == "left":  # keep the pair apart: the left object ends before x = 32
        cx = min(cx, IMAGE_SIZE // 2 - 1 - half)
    elif pair_side == "right":
        cx = max(cx, IMAGE_SIZE // 2 + 1 + half)
    return cx, cy


def sample_scene(rng: random.Random, num_objects: int | None = None) -> Scene:
    """A random scene following the spec; one object 55% of the time unless num_objects is given."""
    if num_objects is None:
        num_objects = 1 if rng.random() < ONE_OBJECT_FRACTION else 2
    background = rng.choice(list(BACKGROUNDS))
    if num_objects == 1:
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
        cx, cy = _place(rng, position, size, None)
        return Scene(background, (ShapeObject(colour, shape, size, position, cx, cy),))
    colours = rng.sample(list(COLOURS), 2)
    objects = []
    for colour, side in zip(colours, ("left", "right"), strict=True):
        shape, size = rng.choice(SHAPES), rng.choice(list(SIZES))
        cx, cy = _place(rng, side, size, side)
        objects.append(ShapeObject(colour, shape, size, side, cx, cy))
    return Scene(background, tuple(objects))


def object_mask(obj: ShapeObject) -> np.ndarray:
    """Boolean (64, 64) mask of one object, rasterised at pixel centres without anti-aliasing."""
    ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] + 0.5  # (64, 64) each
    s = SIZES[obj.size]
    dx, dy = xs - obj.cx, ys - obj.cy
    if obj.shape == "circle":
        return dx**2 + dy**2 <= (s / 2) ** 2
    if obj.shape == "square":
        return (np.abs(dx) <= s / 2) & (np.abs(dy) <= s / 2)
    depth = dy + s / 2  # triangle, apex up: half-width grows linearly from the apex
    return (depth >= 0) & (depth <= s) & (np.abs(dx) <= depth / 2)


def render(scene: Scene) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 image."""
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        image[object_mask(obj)] = COLOURS[obj.colour]
    return image


_AT = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_AT_ALT = {
    "left": "at the left",
    "right": "at the right",
    "top": "on top",
    "bottom": "at the bottom",
    "center": "in the middle",
}


def _noun(obj: ShapeObject, with_size: bool) -> str:
    """'large red circle' or 'red circle'."""
    return f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"


def _caption_one(rng: random.Random, obj: ShapeObject, bg: str, named: set[str]) -> str:
    """One-object caption from a random template naming exactly `named` (colour, shape always)."""
    noun = _noun(obj, "size" in named)
    where = rng.choice((_AT, _AT_ALT))[obj.position] if "position" in named else ""
    ground = (
        rng.choice((f"on a {bg} background", f"{bg} background")) if "background" in named else ""
    )
    template = rng.randrange(4)
    if template == 0:
        parts = [f"a {noun}", where, ground and f", {ground}"]
    elif template == 1:
        parts = [ground and f"{ground},", f"a {noun}", where]
    elif template == 2:
        parts = [where and f"{where},", f"a {noun}", ground and f"on {bg}"]
    else:
        size = f", {obj.size}" if "size" in named else ""
        noun = f"{obj.colour} {obj.shape}{size}"
        parts = ["a picture of a", noun, where, ground and f"with a {bg} background"]
    text = " ".join(p for p in parts if p)
    return text.replace(" ,", ",")


def _caption_two(rng: random.Random, scene: Scene, named: set[str]) -> str:
    """Two-object caption: colours, shapes and sides always named, in varied orders."""
    left, right = scene.objects
    a, b = _noun(left, "size" in named), _noun(right, "size" in named)
    template = rng.randrange(4)
    if template == 0:
        text = f"a {a} on the left and a {b} on the right"
    elif template == 1:
        text = f"a {b} on the right and a {a} on the left"
    elif template == 2:
        text = f"a {a} to the left of a {b}"
    else:
        text = f"a {b} to the right of a {a}"
    if "background" in named:
        text = f"{text}, on a {scene.background} background"
    return text


def caption(scene: Scene, rng: random.Random, full: bool = False) -> Sample:
    """Caption a scene; optional attributes are each named with probability 1/2 (all if full)."""
    optional = (
        ("size", "background") if len(scene.objects) == 2 else ("size", "position", "background")
    )
    named = {"colour", "shape"} | ({"position"} if len(scene.objects) == 2 else set())
    named |= {a for a in optional if full or rng.random() < 0.5}
    if len(scene.objects) == 1:
        text = _caption_one(rng, scene.objects[0], scene.background, named)
    else:
        text = _caption_two(rng, scene, named)
    return Sample(scene, text, frozenset(named))


def make_samples(count: int, seed: int) -> list[Sample]:
    """`count` captioned scenes, identical for identical seeds."""
    rng = random.Random(seed)
    return [caption(sample_scene(rng), rng) for _ in range(count)]


def eval_samples(count: int = 300, seed: int = 10_000, one_fraction: float = 2 / 3) -> list[Sample]:
    """Held-out evaluation prompts: one-object prompts always name colour, shape and position."""
    rng = random.Random(seed)
    samples = []
    for i in range(count):
        one = i < round(count * one_fraction)
        sample = caption(sample_scene(rng, 1 if one else 2), rng)
        named = set(sample.named) | {"position"}
        if one and "position" not in sample.named:
            text = _caption_one(rng, sample.scene.objects[0], sample.scene.background, named)
            sample = Sample(sample.scene, text, frozenset(named))
        samples.append(sample)
    return samples


def vocabulary_corpus() -> list[str]:
    """Every word and punctuation mark any caption can use (for the tokenizer)."""
    words: set[str] = set()
    for sample in make_samples(4000, seed=1):
        words.update(sample.caption.replace(",", " , ").split())
    for sample in eval_samples(300):
        words.update(sample.caption.replace(",", " , ").split())
    words.update(COLOURS, SHAPES, SIZES, POSITIONS, BACKGROUNDS)
    return sorted(words)
