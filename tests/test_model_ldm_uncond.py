"""The paper's unconditional models (LDM-VQ-4 on CelebA-HQ, ...) against diffusers' LDMPipeline on a
tiny random model in its folder layout (`unet/` UNet2DModel with self-attention, `vqvae/` VQModel,
`scheduler/`): same weights and seeds give the same images, in the engine and through
`ldm-serve generate` without a prompt; an image is the same alone or batched."""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from model.checkpoint import keymap
from model.engine import BatchEngine, SampleSpec
from model.pipeline import load_pipeline
from model.txt2img import run
from testkit.tiny_paper_models import build_tiny_ldm_text2img, build_tiny_ldm_uncond
from tests.conftest import REPO
from tests.test_model_parity import assert_close, scheduler_for

SIZE, STEPS = 32, 8  # the UNet's sample_size 8 x the VQ autoencoder's f = 4, as LDMPipeline draws


@pytest.fixture(scope="module")
def uncond(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_ldm_uncond(tmp_path_factory.mktemp("ldm") / "ldm-uncond")


@cache
def reference(path: Path):  # noqa: ANN201 - diffusers is imported lazily (test-only)
    from diffusers import LDMPipeline

    pipe = LDMPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def theirs(path: Path, sampler: str, seeds: list[int]) -> np.ndarray:
    """One diffusers call per seed. LDMPipeline reads `init_noise_sigma` before it sets the
    timesteps, which for Euler is the full 1000-step schedule's (83.8 instead of 27.5 here):
    setting them first gives the pipeline the grid's. It passes no generator to
    `scheduler.step`, so samplers that draw noise while stepping (euler_a, ddim with eta > 0)
    are not comparable."""
    pipe = reference(path)
    pipe.scheduler = scheduler_for(sampler, pipe.scheduler.config)
    pipe.scheduler.set_timesteps(STEPS)  # the pipeline sets them again, the same
    images = [
        pipe(generator=torch.Generator("cpu").manual_seed(seed), num_inference_steps=STEPS,
             output_type="np").images[0]
        for seed in seeds
    ]  # fmt: skip
    return (np.stack(images) * 255).round().astype(np.uint8)


def spec(sampler: str, seed: int, steps: int = STEPS, **fields: object) -> SampleSpec:
    return SampleSpec("", seed=seed, width=SIZE, height=SIZE, steps=steps, sampler=sampler,
                      guidance_scale=1.0, **fields)  # type: ignore[arg-type]  # fmt: skip


def ours(engine: BatchEngine, specs: list[SampleSpec]) -> np.ndarray:
    return np.stack([np.asarray(image) for image in run(engine, specs)])


@pytest.mark.parametrize(
    "sampler", ["ddim", *(pytest.param(s, marks=pytest.mark.slow) for s in ("euler", "dpmpp_2m"))]
)
def test_unconditional_sampling_matches_diffusers(uncond: Path, sampler: str) -> None:
    engine = BatchEngine(load_pipeline(uncond))
    images = ours(engine, [spec(sampler, seed) for seed in (3, 4)])
    assert images.shape == (2, SIZE, SIZE, 3)
    assert_close(images, theirs(uncond, sampler, [3, 4]))


def test_an_image_is_the_same_alone_or_batched(uncond: Path) -> None:
    """Bit-exact on CPU; a prompt and a guidance scale change nothing (there is no text)."""
    engine = BatchEngine(load_pipeline(uncond))
    alone = ours(engine, [spec("euler", 7)])
    batch = [spec("ddim", 1), SampleSpec("a prompt", seed=7, width=SIZE, height=SIZE, steps=STEPS,
                                         sampler="euler", guidance_scale=7.5)]  # fmt: skip
    batch += [spec("euler", 2), spec("dpmpp_2m", 3, steps=5)]
    samples = [engine.add(s) for s in batch]
    assert [s.uncond for s in samples] == [None] * 4  # no unconditional rows
    assert len(engine.groups()) == 1  # one forward: the empty contexts agree
    while len(engine):
        engine.step()
    assert np.array_equal(np.asarray(engine.decode(samples)[1]), alone[0])


def test_unconditional_models_say_what_they_run(uncond: Path) -> None:
    pipe = load_pipeline(uncond)
    assert pipe.tasks == ("sample",)
    assert pipe.latent_scale == 0.5  # the VQModel config's, which LDMPipeline divides by
    engine = BatchEngine(pipe)
    with pytest.raises(ValueError, match="runs sample: no init image"):
        engine.add(spec("ddim", 1, init_image=Image.new("RGB", (SIZE, SIZE))))
    with pytest.raises(ValueError, match="not an upscaler"):
        engine.add(spec("ddim", 1, low_res_image=Image.new("RGB", (SIZE // 4, SIZE // 4))))


def test_fused_qkv_is_compvis_legacy_layout() -> None:
    """CompVis's fused qkv holds each head's [q; k; v] in turn (QKVAttentionLegacy)."""
    heads, channels = 2, 4
    names = [f"p.{n}.{kind}" for n in ("to_q", "to_k", "to_v", "to_out.0")
             for kind in ("weight", "bias")]  # fmt: skip
    source = {name: torch.randn(channels, channels) if name.endswith("weight")
              else torch.randn(channels) for name in names}  # fmt: skip
    fused = keymap.fuse_qkv(source, {"p.": heads})
    assert sorted(fused) == ["p.to_out.0.bias", "p.to_out.0.weight", "p.to_qkv.bias",
                             "p.to_qkv.weight"]  # fmt: skip
    assert fused["p.to_qkv.weight"].shape == (3 * channels, channels, 1)
    assert fused["p.to_out.0.weight"].shape == (channels, channels, 1)
    d = channels // heads
    rows = fused["p.to_qkv.weight"][..., 0].reshape(heads, 3, d, channels)  # (head, qkv, d, C)
    for i, name in enumerate(("to_q", "to_k", "to_v")):
        assert torch.equal(rows[:, i].reshape(channels, channels), source[f"p.{name}.weight"])


def generate(model: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", "generate", "--model", str(model), "--seed", "3",
         "--steps", str(STEPS), "--out", str(out), *options],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
def test_cli_generates_without_a_prompt(uncond: Path, tmp_path: Path) -> None:
    """No size given: the model's own (UNet sample size 8 x f 4), as LDMPipeline draws."""
    out = tmp_path / "face.png"
    result = generate(uncond, out)
    assert result.returncode == 0, result.stderr
    assert_close(np.asarray(Image.open(out).convert("RGB"))[None], theirs(uncond, "ddim", [3]))


@pytest.mark.slow
def test_cli_asks_text_models_for_a_prompt(tmp_path: Path) -> None:
    model = build_tiny_ldm_text2img(tmp_path / "ldm-text2im")
    result = generate(model, tmp_path / "out.png")
    assert result.returncode == 2
    assert "--prompt is required" in result.stderr
    assert not (tmp_path / "out.png").exists()


def test_kl_unconditional_folder_matches_diffusers_and_writes_back(tmp_path: Path) -> None:
    """The paper's KL-reg. unconditional models (LSUN-churches LDM-KL-8): an LDMPipeline folder
    with an AutoencoderKL in `vqvae/` loads, draws diffusers' image, and is written back."""
    from diffusers import AutoencoderKL, LDMPipeline, UNet2DModel

    from model.checkpoint.ldm_folders_save import save_ldm_folder
    from testkit.tiny_paper_models import tiny_ldm_scheduler, tiny_unet2d_config

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32), latent_channels=3, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1, scaling_factor=0.5,
    )  # fmt: skip
    unet = UNet2DModel(**tiny_unet2d_config())
    path = tmp_path / "ldm-kl"
    LDMPipeline(vqvae=vae, unet=unet, scheduler=tiny_ldm_scheduler()).save_pretrained(str(path))
    pipe = load_pipeline(path)
    assert pipe.tasks == ("sample",) and pipe.native_size == SIZE
    images = ours(BatchEngine(pipe), [spec("ddim", 3)])
    assert_close(images, theirs(path, "ddim", [3]))
    back = save_ldm_folder(pipe.components, tmp_path / "back", torch.float32)
    assert_close(ours(BatchEngine(load_pipeline(back)), [spec("ddim", 3)]), images)
