"""The shapes dataset keeps to issue 5's spec: palette, corners, positions, captions, seeds."""

from __future__ import annotations

import random

import numpy as np
import pytest

from training.shapes import (
    BACKGROUNDS,
    COLOURS,
    CORNER,
    JITTER,
    POSITIONS,
    SIZES,
    eval_samples,
    make_samples,
    object_mask,
    render,
    sample_scene,
)

SAMPLES = make_samples(800, seed=5)


def test_deterministic_from_seed() -> None:
    again = make_samples(800, seed=5)
    assert [s.caption for s in again] == [s.caption for s in SAMPLES]
    assert all(
        np.array_equal(render(a.scene), render(b.scene))
        for a, b in zip(again, SAMPLES, strict=True)
    )
    assert [s.caption for s in make_samples(50, seed=6)] != [s.caption for s in SAMPLES[:50]]


def test_images_use_only_the_palette() -> None:
    allowed = {tuple(c) for c in (*BACKGROUNDS.values(), *COLOURS.values())}
    for sample in SAMPLES[:200]:
        image = render(sample.scene)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        colours = {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}
        expected = {BACKGROUNDS[sample.scene.background]}
        expected |= {COLOURS[o.colour] for o in sample.scene.objects}
        assert colours <= allowed and colours == expected


def test_corner_patches_are_background() -> None:
    for sample in SAMPLES:
        image = render(sample.scene)
        background = np.array(BACKGROUNDS[sample.scene.background])
        for patch in (
            image[:CORNER, :CORNER],
            image[:CORNER, -CORNER:],
            image[-CORNER:, :CORNER],
            image[-CORNER:, -CORNER:],
        ):
            assert (patch == background).all()


def test_positions_sizes_and_pairs() -> None:
    for sample in SAMPLES:
        objects = sample.scene.objects
        assert len(objects) in (1, 2)
        for obj in objects:
            ax, ay = POSITIONS[obj.position]
            assert abs(obj.cx - ax) <= JITTER and abs(obj.cy - ay) <= JITTER
            ys, xs = np.nonzero(object_mask(obj))
            extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
            assert abs(extent - SIZES[obj.size]) <= 2
        if len(objects) == 2:
            left, right = objects
            assert (left.position, right.position) == ("left", "right")
            assert left.colour != right.colour
            assert not (object_mask(left) & object_mask(right)).any()


def test_every_attribute_value_occurs() -> None:
    rng = random.Random(0)
    scenes = [sample_scene(rng, 1) for _ in range(2000)]
    for attribute in ("colour", "shape", "size", "position"):
        values = {getattr(s.objects[0], attribute) for s in scenes}
        assert len(values) == {"colour": 6, "shape": 3, "size": 2, "position": 5}[attribute]
    assert {s.background for s in scenes} == set(BACKGROUNDS)


@pytest.mark.parametrize("sample", SAMPLES[:300], ids=lambda s: s.caption[:40])
def test_captions_name_what_they_claim(sample) -> None:  # type: ignore[no-untyped-def]
    text = sample.caption
    for obj in sample.scene.objects:
        assert obj.colour in text and obj.shape in text
        if "size" in sample.named:
            assert obj.size in text
    if "background" in sample.named:
        assert sample.scene.background in text
    if len(sample.scene.objects) == 2:
        assert "left" in text or "right" in text


def test_captions_are_varied() -> None:
    captions = {s.caption for s in SAMPLES}
    assert len(captions) > 500
    assert any(len(s.caption.split()) <= 3 for s in SAMPLES)  # "a blue square"
    assert any(s.caption.startswith("on a") for s in SAMPLES)  # background first


def test_eval_prompts_name_colour_shape_position() -> None:
    samples = eval_samples()
    assert len(samples) == 300
    assert sum(len(s.scene.objects) == 1 for s in samples) == 200
    for sample in samples:
        assert {"colour", "shape", "position"} <= sample.named
    train = {(s.caption, s.scene) for s in make_samples(2000, seed=1)}
    assert len([s for s in samples if (s.caption, s.scene) in train]) < 10
