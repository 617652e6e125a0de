"""A few training steps of each stage on tiny configs: the loss falls and the output loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.autoencoder import AutoencoderConfig
from model.sampling.schedule import ScheduleConfig
from model.unet import UNetConfig
from training.autoencoder_trainer import (
    AutoencoderTraining,
    load_autoencoder,
    train_autoencoder,
)
from training.ldm_trainer import SHAPES_SCHEDULE, LDMTraining, target, train_ldm
from training.shapes import make_samples, render

TINY_AE = AutoencoderConfig(
    base_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1, latent_channels=4, norm_groups=2
)
TINY_UNET = UNetConfig(
    model_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_levels=(False, True),
    num_heads=(1, 2),
    context_dim=64,
    use_linear_projection=True,
    norm_groups=4,
)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list]:
    samples = make_samples(160, seed=2)
    return np.stack([render(s.scene) for s in samples]), samples


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory: pytest.TempPathFactory, data: tuple) -> Path:
    images, _ = data
    run = tmp_path_factory.mktemp("ae")
    training = AutoencoderTraining(
        steps=30,
        batch_size=8,
        learning_rate=2e-3,
        warmup=5,
        eval_every=30,
        checkpoint_every=15,
        threads=None,
    )
    model = train_autoencoder(images[:128], images[128:], run, TINY_AE, training, resume=False)
    history = json.loads((run / "losses.json").read_text())
    assert len(history) == 30 and np.mean(history[-5:]) < np.mean(history[:5])
    assert model.config.scaling_factor > 0
    return run / "autoencoder.pt"


def test_autoencoder_reloads(autoencoder: Path) -> None:
    model = load_autoencoder(autoencoder)
    x = torch.zeros(1, 3, 64, 64)
    assert model.encode(x).mean.shape == (1, 4, 16, 16)


def test_autoencoder_resumes(autoencoder: Path, data: tuple, capsys: pytest.CaptureFixture) -> None:
    images, _ = data
    training = AutoencoderTraining(steps=30, batch_size=8, eval_every=30, threads=None)
    train_autoencoder(images[:128], images[128:], autoencoder.parent, TINY_AE, training)
    assert "resumed stage 1" in capsys.readouterr().out


@pytest.mark.slow  # the fast tier stays under 3 minutes; the full suite runs it
def test_ldm_loss_falls_and_folder_loads(autoencoder: Path, data: tuple, tmp_path: Path) -> None:
    images, samples = data
    training = LDMTraining(
        steps=40,
        batch_size=16,
        learning_rate=2e-3,
        warmup=5,
        checkpoint_every=20,
        sample_every=0,
        threads=None,
    )
    train_ldm(
        images,
        samples,
        autoencoder,
        tmp_path / "run",
        tmp_path / "model",
        unet_config=TINY_UNET,
        training=training,
        resume=False,
    )
    history = np.array(json.loads((tmp_path / "run" / "losses.json").read_text()))
    assert history[-10:].mean() < history[:10].mean()
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "model" / part).is_dir()
    from model.engine import BatchEngine
    from model.pipeline import load_pipeline
    from model.txt2img import txt2img

    pipe = load_pipeline(tmp_path / "model")
    images_out = txt2img(
        BatchEngine(pipe),
        prompts=["a red circle", "a blue square on the left"],
        seeds=[0, 1],
        width=64,
        height=64,
        steps=3,
    )
    assert [im.size for im in images_out] == [(64, 64), (64, 64)]
    scheduler = json.loads((tmp_path / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == SHAPES_SCHEDULE.prediction_type == "v_prediction"


def test_v_target_inverts_to_the_clean_latent() -> None:
    """diffusers' v -> x0 rule, x0 = sqrt(a) z_t - sqrt(1 - a) v, recovers z0 from our target."""
    generator = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(2, 3, 4, 4, 4, generator=generator)
    a = torch.tensor([0.9999, 0.5, 4e-5]).view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
    v = target(SHAPES_SCHEDULE, z0, eps, a)
    torch.testing.assert_close(a.sqrt() * zt - (1 - a).sqrt() * v, z0)
    torch.testing.assert_close(a.sqrt() * v + (1 - a).sqrt() * zt, eps)
    assert target(ScheduleConfig(prediction_type="epsilon"), z0, eps, a) is eps


def _train_tiny(autoencoder: Path, data: tuple, run: Path, steps: int, **extra: object) -> Path:
    """Stage 2 on the tiny UNet for `steps` (resuming from `run` when a checkpoint is there)."""
    images, samples = data
    training = LDMTraining(
        steps=steps,
        batch_size=8,
        learning_rate=2e-3,
        warmup=2,
        checkpoint_every=5,
        sample_every=0,
        threads=None,
        **extra,  # type: ignore[arg-type]
    )
    return train_ldm(
        images, samples, autoencoder, run, run / "model", unet_config=TINY_UNET, training=training
    )


def _unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_ldm_resume_reproduces_an_uninterrupted_run(
    autoencoder: Path, data: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from training import ldm_trainer

    save = ldm_trainer.save_checkpoint

    def save_and_keep_step_5(path: Path, step: int, **state: object) -> None:
        save(path, step, **state)
        if step == 5:  # what an interruption after step 5 would leave behind
            shutil.copytree(
                path.parent, tmp_path / "interrupted", ignore=shutil.ignore_patterns("model")
            )

    monkeypatch.setattr(ldm_trainer, "save_checkpoint", save_and_keep_step_5)
    straight = _unet_weights(_train_tiny(autoencoder, data, tmp_path / "straight", 10))
    monkeypatch.undo()
    resumed = _unet_weights(_train_tiny(autoencoder, data, tmp_path / "interrupted", 10))
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


@pytest.mark.gpu
def test_ldm_on_cuda_sees_the_same_data_as_on_cpu(
    autoencoder: Path, data: tuple, tmp_path: Path
) -> None:
    _train_tiny(autoencoder, data, tmp_path / "cpu", 3)
    _train_tiny(autoencoder, data, tmp_path / "cuda", 3, device="cuda")
    cpu = json.loads((tmp_path / "cpu" / "losses.json").read_text())
    cuda = json.loads((tmp_path / "cuda" / "losses.json").read_text())
    assert np.allclose(cpu, cuda, rtol=1e-3), (cpu, cuda)  # same init, batches, noise and t


def test_warm_start_adds_attention_as_the_identity(
    autoencoder: Path, data: tuple, tmp_path: Path
) -> None:
    import dataclasses

    from model.unet import UNet
    from training.warm_start import warm_start

    _train_tiny(autoencoder, data, tmp_path / "base", 5)
    checkpoint = tmp_path / "base" / "checkpoint.pt"
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    base = UNet(TINY_UNET)
    base.load_state_dict(payload["ema_unet"]["shadow"])
    wider = UNet(dataclasses.replace(TINY_UNET, attention_levels=(True, True)))
    text = torch.nn.Module()
    text.load_state_dict = lambda state: None  # type: ignore[method-assign,assignment,misc]
    new = warm_start(wider, text, checkpoint)
    assert new and all(name.startswith(("input_blocks.1.", "output_blocks.")) for name in new)
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 77, 64)
    with torch.no_grad():
        assert torch.allclose(wider(x, t, context), base(x, t, context), atol=1e-5)
    narrower = UNet(dataclasses.replace(TINY_UNET, attention_levels=(False, False)))
    with pytest.raises(ValueError, match="has weights this UNet lacks"):
        warm_start(narrower, text, checkpoint)


def test_ldm_warm_start_trains_the_wider_unet(
    autoencoder: Path, data: tuple, tmp_path: Path
) -> None:
    import dataclasses

    images, samples = data
    _train_tiny(autoencoder, data, tmp_path / "base", 5)
    training = LDMTraining(steps=4, batch_size=8, sample_every=0, threads=None, warmup=1)
    wider = dataclasses.replace(TINY_UNET, attention_levels=(True, True))
    out = train_ldm(
        images, samples, autoencoder, tmp_path / "wide", tmp_path / "wide" / "model",
        unet_config=wider, training=training, init=tmp_path / "base" / "checkpoint.pt",
    )  # fmt: skip
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["down_block_types"][0] == "CrossAttnDownBlock2D"


def test_align_decoder_changes_only_the_decoder(
    autoencoder: Path, data: tuple, tmp_path: Path
) -> None:
    from cli.main import main
    from model.engine import BatchEngine
    from model.pipeline import load_pipeline
    from model.txt2img import txt2img
    from training.decoder_alignment import AlignTraining, align_decoder

    images, samples = data
    base = _train_tiny(autoencoder, data, tmp_path / "base", 5)
    ae = load_autoencoder(autoencoder)
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    training = AlignTraining(steps=6, batch_size=4, first_step=(20, 23))
    captions = [s.caption for s in samples[:48]]
    report = align_decoder(load_pipeline(base).components, ae, captions, images[:48], training)
    assert all(np.isfinite(v) for v in report.values()) and len(report) == 3
    after = ae.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("decoder", "post_quant")) for k in changed)

    out = tmp_path / "aligned"
    argv = ["train", "align-decoder", "--model", str(base), "--autoencoder", str(autoencoder)]
    assert main([*argv, "--output", str(out), "--num-images", "40", "--steps", "2"]) == 0
    engine = BatchEngine(load_pipeline(out))
    assert len(txt2img(engine, ["a red circle"], seeds=[0], width=64, height=64, steps=2)) == 1


@pytest.mark.slow  # a training step of the shapes UNet: full tier
def test_train_ldm_writes_into_its_run_dir_unless_told(
    autoencoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train ldm` without --output once wrote models/default, the shipped model, when run from
    the repository (as its README's commands are)."""
    from cli.main import main

    monkeypatch.chdir(tmp_path)
    argv = ["train", "ldm", "--autoencoder", str(autoencoder), "--run-dir", "run", "--steps", "1",
            "--batch-size", "2", "--num-images", "8", "--sample-every", "0"]  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / "run" / "model" / "model_index.json").is_file()
    assert not (tmp_path / "models").exists()
