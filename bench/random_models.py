"""Random-weight models the benchmarks run on, written as diffusers folders.

`build_standin`: the default model's architecture, for bench.load before models/default exists;
`build_midsize_sd`: a mid-size SD layout, for bench.model's comparison with diffusers.
"""

from __future__ import annotations

from pathlib import Path

CONTEXT_DIM = 256  # the mid-size model's text width (SD 1.5: 768)


def build_standin(path: Path) -> Path:
    """Random weights in the default model's architecture (the `ldm-serve train` configs): the
    same FLOPs and the same timings as models/default, before that model exists."""
    import shutil

    import torch

    from model.autoencoder import AutoencoderKL
    from model.checkpoint.diffusers_folder import save_diffusers
    from model.unet import UNet
    from training.autoencoder_trainer import SHAPES_AUTOENCODER
    from training.ldm_trainer import SHAPES_SCHEDULE, SHAPES_UNET, text_encoder_for
    from training.shapes import vocabulary_corpus
    from training.tokenizer_builder import build_tokenizer

    torch.manual_seed(0)
    tokenizer_dir = path.parent / f".{path.name}-tokenizer"
    tokenizer = build_tokenizer(vocabulary_corpus(), tokenizer_dir)
    save_diffusers(path, unet=UNet(SHAPES_UNET), vae=AutoencoderKL(SHAPES_AUTOENCODER).eval(),
                   text_encoder=text_encoder_for(tokenizer), tokenizer=tokenizer,
                   schedule=SHAPES_SCHEDULE)  # fmt: skip
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, path / "tokenizer" / name)
    return path


def build_midsize_sd(path: Path, seed: int = 0) -> Path:
    """Write a random mid-size SD-layout diffusers folder (UNet ~ 1/5 of SD 1.5 widths)."""
    from testkit.tiny_models import build_tiny_sd

    unet = dict(
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = dict(
        block_out_channels=(32, 64, 128),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=32,
        layers_per_block=2,
    )
    text = dict(hidden_size=CONTEXT_DIM, intermediate_size=4 * CONTEXT_DIM, num_attention_heads=4,
                num_hidden_layers=4)  # fmt: skip
    return build_tiny_sd(path, seed=seed, unet=unet, vae=vae, text=text)
