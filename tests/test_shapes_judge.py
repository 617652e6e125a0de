"""The adherence judge is right on ground-truth images (required before it judges a model)."""

from __future__ import annotations

import numpy as np
import pytest

from training.judge import THRESHOLDS, adherence, find_objects, judge
from training.shapes import COLOURS, Scene, ShapeObject, eval_samples, make_samples, render


@pytest.mark.slow  # renders and judges thousands of scenes (~5 s)
def test_judge_is_at_least_99_percent_right_on_ground_truth() -> None:
    samples = make_samples(1500, seed=123) + eval_samples()
    verdicts = [judge(render(s.scene), s) for s in samples]
    accuracy = sum(v.ok for v in verdicts) / len(verdicts)
    assert accuracy >= 0.99, accuracy
    metrics = adherence([render(s.scene) for s in eval_samples()], eval_samples())
    assert all(metrics[k] >= 0.99 for k in THRESHOLDS), metrics


def test_judge_reads_every_attribute_even_when_unnamed() -> None:
    for sample in make_samples(600, seed=9):
        background, found = find_objects(render(sample.scene))
        assert background == sample.scene.background
        got = sorted((f.colour, f.shape) for f in found)
        assert got == sorted((o.colour, o.shape) for o in sample.scene.objects)
        if len(found) == 1:
            assert found[0].position == sample.scene.objects[0].position


def test_judge_rejects_wrong_images() -> None:
    sample = eval_samples()[0]
    obj = sample.scene.objects[0]
    other = next(c for c in COLOURS if c != obj.colour)
    wrong = Scene(
        sample.scene.background,
        (ShapeObject(other, obj.shape, obj.size, obj.position, obj.cx, obj.cy),),
    )
    verdict = judge(render(wrong), sample)
    assert not verdict.checks["colour"] and verdict.checks["shape"]
    blank = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert not judge(blank, sample).ok


def test_judge_tolerates_blur_and_noise() -> None:
    rng = np.random.default_rng(0)
    samples = make_samples(300, seed=77)
    images = []
    for s in samples:
        image = render(s.scene).astype(np.float32)
        image = (image + np.roll(image, 1, 0) + np.roll(image, 1, 1)) / 3  # soft edges
        image += rng.normal(0, 8, image.shape)
        images.append(image.clip(0, 255).astype(np.uint8))
    assert sum(judge(i, s).ok for i, s in zip(images, samples, strict=True)) / len(samples) >= 0.97
