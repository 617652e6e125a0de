"""The paper's class-conditional ImageNet LDM (Sec. 4.2: one learned token per class, read by
cross-attention; a null class for classifier-free guidance) against an independent reference
assembled here from diffusers' UNet2DConditionModel, VQModel, an embedding table and
DDIMScheduler (diffusers has no pipeline for it), on a tiny random model."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from model.class_embedder import default_class_names
from model.engine import BatchEngine, SampleSpec
from model.pipeline import load_pipeline
from model.txt2img import run
from testkit.tiny_paper_models import build_tiny_ldm_classcond, build_tiny_ldm_uncond
from tests.conftest import REPO
from tests.test_model_parity import assert_close

SIZE, STEPS, CLASSES = 32, 8, 10


@pytest.fixture(scope="module")
def classcond(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ldm_classcond(tmp_path_factory.mktemp("ldm") / "ldm-cin", classes=CLASSES)


@cache
def parts(path: Path):  # noqa: ANN201 - diffusers is imported lazily (test-only)
    from diffusers import DDIMScheduler, UNet2DConditionModel, VQModel

    unet = UNet2DConditionModel.from_pretrained(str(path / "unet"), local_files_only=True)
    vqvae = VQModel.from_pretrained(str(path / "vqvae"), local_files_only=True)
    table = load_file(str(path / "class_embedder" / "model.safetensors"))["embedding.weight"]
    scheduler = DDIMScheduler.from_pretrained(str(path / "scheduler"), local_files_only=True)
    return unet.eval(), vqvae.eval(), table, scheduler


@torch.no_grad()
def reference(path: Path, label: int, seed: int, scale: float) -> np.ndarray:
    """DDIM (eta 0) with classifier-free guidance against the null class, as CompVis' cin
    notebook samples: eps = eps(null) + scale * (eps(class) - eps(null))."""
    unet, vqvae, table, scheduler = parts(path)
    scheduler.set_timesteps(STEPS)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn((1, 3, SIZE // 4, SIZE // 4), generator=generator)  # (1, 3, 8, 8)
    cond = table[label][None, None]  # (1, 1, D): the class's one token
    null = table[CLASSES][None, None]  # (1, 1, D): the null class
    for t in scheduler.timesteps:
        if scale > 1:
            eps_null, eps = unet(latents.repeat(2, 1, 1, 1), t, torch.cat([null, cond])).sample
            eps = eps_null + scale * (eps - eps_null)
        else:
            eps = unet(latents, t, cond).sample
        latents = scheduler.step(eps, t, latents).prev_sample
    pixels = vqvae.decode(latents / vqvae.config.scaling_factor).sample  # quantized
    image = (pixels / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)[0].numpy()
    return (image * 255).round().astype(np.uint8)


def spec(label: int | None, seed: int, scale: float = 3.0, **fields: object) -> SampleSpec:
    return SampleSpec(seed=seed, width=SIZE, height=SIZE, steps=STEPS, sampler="ddim",
                      guidance_scale=scale, class_label=label, **fields)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_class_conditional_sampling_matches_the_reference(classcond: Path, scale: float) -> None:
    engine = BatchEngine(load_pipeline(classcond))
    labels, seeds = [2, 7], [5, 6]
    images = run(
        engine, [spec(label, seed, scale) for label, seed in zip(labels, seeds, strict=True)]
    )
    for image, label, seed in zip(images, labels, seeds, strict=True):
        assert_close(np.asarray(image)[None], reference(classcond, label, seed, scale)[None])


def test_the_class_changes_the_image(classcond: Path) -> None:
    engine = BatchEngine(load_pipeline(classcond))
    first, second = run(engine, [spec(1, 9), spec(8, 9)])
    diff = np.abs(np.asarray(first, np.int16) - np.asarray(second, np.int16))
    assert diff.mean() > 2, "the same seed drew the same image for two classes"


def test_an_image_is_the_same_alone_or_batched_with_other_classes(classcond: Path) -> None:
    engine = BatchEngine(load_pipeline(classcond))
    alone = np.asarray(run(engine, [spec(4, 11)])[0])
    samples = [engine.add(s) for s in (spec(0, 1), spec(4, 11), spec(9, 2, scale=1.0))]
    assert len(engine.groups()) == 1  # one forward: one class token each
    assert [s.uncond is None for s in samples] == [False, False, True]
    while len(engine):
        engine.step()
    assert np.array_equal(np.asarray(engine.decode(samples)[1]), alone)


def test_labels_are_checked(classcond: Path, tmp_path: Path) -> None:
    engine = BatchEngine(load_pipeline(classcond))
    with pytest.raises(ValueError, match="class_label"):
        engine.add(spec(None, 0))
    with pytest.raises(ValueError, match=r"outside 0\.\.9"):
        engine.add(spec(CLASSES, 0))  # the null class is not a class one can ask for
    uncond = BatchEngine(load_pipeline(build_tiny_ldm_uncond(tmp_path / "uncond")))
    with pytest.raises(ValueError, match="not class-conditional"):
        uncond.add(spec(3, 0, scale=1.0))
    assert len(engine) == 0 and len(uncond) == 0  # nothing half-admitted


def test_class_conditional_models_say_what_they_run(classcond: Path) -> None:
    pipe = load_pipeline(classcond)
    assert pipe.tasks == ("sample",)
    assert pipe.class_conditioned and pipe.guidable and not pipe.text_conditioned
    assert pipe.conditioner.config.class_names[3] == "class 3"


def test_imagenet_names_are_in_the_ilsvrc_order() -> None:
    names = default_class_names(1000)
    assert len(names) == 1000
    assert names[0].startswith("tench") and names[1].startswith("goldfish")
    assert names[207] == "golden retriever" and names[999].startswith("toilet tissue")
    assert default_class_names(10) == ()


def generate(model: Path, out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "generate", "--model", str(model), "--steps",
         str(STEPS), "--sampler", "ddim", "--seed", "5", "--out", str(out), *options],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow  # three CLI processes, ~20 s
def test_cli_generate_samples_a_class_by_name_at_the_model_size(
    classcond: Path, tmp_path: Path
) -> None:
    """No size given: the model's own (UNet sample size 8 x f 4); guidance as asked."""
    result = generate(
        classcond, tmp_path / "out.png", "--class-label", "Class 2", "--guidance", "3"
    )
    assert result.returncode == 0, result.stderr
    ours = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert_close(ours[None], reference(classcond, 2, 5, 3.0)[None])
    refused = generate(classcond, tmp_path / "x.png", "--class-label", "clas 4")
    assert refused.returncode == 2 and "near matches: 'class 4' (4)" in refused.stderr
    refused = generate(classcond, tmp_path / "x.png")
    assert refused.returncode == 2 and "--class-label is required" in refused.stderr
