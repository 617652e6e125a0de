"""The VQ-f4 autoencoder variant (issue 14, the paper's Table 8): training steps lower the loss, the
VQModel folder loads in ldm-serve and diffusers alike, and the metrics are right by hand."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cli.main import main
from model.autoencoder import AutoencoderConfig
from model.checkpoint.diffusers_folder import load_vq
from model.checkpoint.files import read_state_dict
from model.vq import VectorQuantizer, VQAutoencoder
from tests.conftest import REPO
from training.autoencoder_eval import codebook_usage, evaluate_autoencoder, load_autoencoder_folder
from training.common import psnr, to_tensor
from training.shapes import make_samples, render
from training.vq_trainer import (
    VQTraining,
    load_vq_autoencoder,
    quantize_straight_through,
    restart_dead_codes,
    train_vq_autoencoder,
)

# 16 base channels: with 8 (test_training_smoke's TINY_AE) the codebook collapses to 2-6 codes and
# 60 steps leave the loss where it started.
TINY_AE = AutoencoderConfig(
    base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1, latent_channels=4, norm_groups=2
)
SHIPPED = REPO / "models" / "default-vq-autoencoder"


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Train on one thread, as the shipped run: two on cores that other processes share wait on
    each other at every op (10x slower at times); the thread count is restored afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.stack([render(s.scene) for s in make_samples(160, seed=2)])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray) -> Path:
    """40 steps of the VQ trainer on a tiny config (what `train autoencoder --kind vq` calls)."""
    run_dir = tmp_path_factory.mktemp("vq")
    training = VQTraining(
        steps=40, batch_size=8, learning_rate=1e-3, warmup=5, restart_every=10,
        eval_every=40, checkpoint_every=20, threads=1,
    )  # fmt: skip
    train_vq_autoencoder(images[:128], images[128:], run_dir, TINY_AE, training, 32, resume=False)
    return run_dir


@pytest.mark.slow  # trains (~10 s on 2 cores)
def test_vq_training_lowers_the_loss(run: Path) -> None:
    history = json.loads((run / "losses.json").read_text())
    assert len(history) == 40 and np.mean(history[-5:]) < np.mean(history[:5])
    model = load_vq_autoencoder(run / "autoencoder.pt")
    assert model.config.scaling_factor > 0 and model.quantize.embedding.num_embeddings == 32
    assert model.encode(torch.zeros(1, 3, 64, 64)).shape == (1, 4, 16, 16)


@pytest.mark.slow  # trains (~10 s on 2 cores)
def test_vq_training_resumes(run: Path, images: np.ndarray, capsys: pytest.CaptureFixture) -> None:
    training = VQTraining(steps=40, batch_size=8, eval_every=40, threads=1)
    train_vq_autoencoder(images[:128], images[128:], run, TINY_AE, training, 32)
    assert "resumed VQ stage 1 from" in capsys.readouterr().out


@pytest.mark.slow  # trains (~10 s on 2 cores)
def test_folder_decodes_the_same_in_ldm_serve_and_diffusers(run: Path, images: np.ndarray) -> None:
    from diffusers import VQModel

    folder = run / "vqvae"
    ours = load_vq(folder).eval()
    theirs = VQModel.from_pretrained(str(folder), local_files_only=True).eval()
    trained = load_vq_autoencoder(run / "autoencoder.pt")
    x = to_tensor(images[128:136])  # (8, 3, 64, 64)
    with torch.no_grad():
        z = ours.encode(x)  # (8, 4, 16, 16)
        assert torch.equal(z, trained.encode(x))  # fp32 folder: the trained weights exactly
        assert (z - theirs.encode(x).latents).abs().max() < 1e-4
        for latents in (z, torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))):
            difference = ours.decode(latents) - theirs.decode(latents).sample
            assert difference.abs().max() < 1e-4
    assert isinstance(load_autoencoder_folder(folder), VQAutoencoder)


@pytest.mark.slow  # trains (~10 s on 2 cores)
def test_cli_trains_the_vq_kind(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The real command on the shapes config: 3 steps, 256 held-out scenes, an fp16 folder."""
    argv = ["train", "autoencoder", "--kind", "vq", "--steps", "3", "--batch-size", "2"]
    argv += ["--num-images", "260", "--codebook-size", "64", "--threads", "1", "--fp16"]
    argv += ["--run-dir", str(tmp_path / "run"), "--output", str(tmp_path / "vq")]
    assert main(argv) == 0
    assert "held-out PSNR" in capsys.readouterr().out
    config = json.loads((tmp_path / "vq" / "config.json").read_text())
    assert config["_class_name"] == "VQModel" and config["num_vq_embeddings"] == 64
    weights = read_state_dict(tmp_path / "vq" / "diffusion_pytorch_model.safetensors")
    assert weights["quantize.embedding.weight"].dtype == torch.float16
    assert (tmp_path / "run" / "autoencoder.pt").is_file()
    with pytest.raises(SystemExit, match="--kind kl"):
        main([*argv, "--decoder-only"])


def test_codes_are_what_decode_quantizes_to() -> None:
    quantizer = VectorQuantizer(16, 4)
    z = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(1))  # (B, C, h, w)
    codes = quantizer.codes(z)  # (3, 5, 6)
    assert codes.shape == (3, 5, 6)
    assert torch.equal(quantizer(z), quantizer.embedding(codes).permute(0, 3, 1, 2))


def test_straight_through_passes_gradients_and_weighs_commitment_by_beta() -> None:
    quantizer = VectorQuantizer(8, 2)
    z = torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    z_q, loss, codes = quantize_straight_through(quantizer, z, beta=0.25)
    assert torch.allclose(z_q, quantizer(z), atol=1e-6)  # forward: the codes (z + (e - z))
    e = quantizer(z).detach()
    assert torch.allclose(loss, 1.25 * (z.detach() - e).pow(2).mean())
    z_q.sum().backward()  # backward: the identity into z
    assert torch.equal(z.grad, torch.ones_like(z))
    quantizer.zero_grad()
    loss.backward()  # the codebook term moves only the codes; commitment only the encoder
    assert quantizer.embedding.weight.grad[codes.unique()].abs().sum() > 0


def test_dead_codes_restart_on_latents() -> None:
    quantizer = VectorQuantizer(4, 2)
    z = torch.arange(8.0).view(1, 2, 2, 2)  # latents (0, 4), (1, 5), (2, 6), (3, 7)
    usage = torch.tensor([5, 0, 3, 0])
    kept = quantizer.embedding.weight[[0, 2]].clone()
    moved = restart_dead_codes(quantizer, usage, z, torch.Generator().manual_seed(0))
    assert moved == 2
    latents = {(float(a), float(b)) for a, b in zip(range(4), range(4, 8), strict=True)}
    for row in quantizer.embedding.weight[[1, 3]]:
        assert tuple(row.tolist()) in latents
    assert torch.equal(quantizer.embedding.weight[[0, 2]], kept)


def test_codebook_usage_by_hand() -> None:
    codes = torch.tensor([[0, 1], [2, 3]]).repeat(5, 1)  # 4 codes, 5 hits each
    used, perplexity = codebook_usage(codes, 16)
    assert used == 4 / 16 and perplexity == pytest.approx(4.0)
    used, perplexity = codebook_usage(torch.tensor([7, 7, 7, 2]), 8)  # p = (3/4, 1/4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert used == 2 / 8 and perplexity == pytest.approx(math.exp(entropy))  # 1.755
    assert codebook_usage(torch.zeros(10, dtype=torch.long), 4) == (0.25, 1.0)


def test_psnr_by_hand() -> None:
    image = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    assert psnr(image, image) == pytest.approx(10 * math.log10(255**2 / 1e-10))  # 148.1, finite
    assert psnr(image, image + 1) == pytest.approx(20 * math.log10(255))  # MSE 1: 48.13 dB
    black, white = np.zeros_like(image), np.full_like(image, 255)
    assert psnr(black, white) == pytest.approx(0.0)
    mixed = np.stack([image[0], image[1] + 1])  # mean of per-image PSNR, not PSNR of the mean
    assert psnr(image, mixed) == pytest.approx((148.13080 + 48.13080) / 2, abs=1e-4)


def card_psnr() -> float:
    """The VQ row's PSNR in models/default/README.md's Table 8 section."""
    card = (REPO / "models" / "default" / "README.md").read_text()
    row = re.search(r"^\| VQ.*$", card, re.MULTILINE)
    assert row is not None, "no VQ row in the model card"
    return float(re.search(r"([\d.]+) dB", row.group(0)).group(1))


def test_shipped_vq_autoencoder_reaches_the_card_psnr() -> None:
    folder_bytes = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert folder_bytes < 2_000_000
    report = evaluate_autoencoder(load_vq(SHIPPED).eval(), count=256)
    assert abs(report["psnr_db"] - card_psnr()) < 0.5
    assert report["codes_used"] > 0.5
