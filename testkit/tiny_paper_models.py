"""Tiny random models of the LDM paper's own pipelines, built with diffusers (test-only oracle):
`build_tiny_ldm_text2img` writes an `LDMTextToImagePipeline` folder (LDMBert over a small BERT
wordpiece vocabulary written here, a cross-attention UNet, an f=8 KL autoencoder, DDIM)."""

from __future__ import annotations

from pathlib import Path

import torch

from testkit.tiny_models import tiny_unet_config

WORDS = [
    "a", "an", "the", "red", "green", "blue", "cat", "dog", "sat", "on", "mat", "circle",
    "square", "of", "in", "photo", "painting", "##s", "##ing", "##ed",
]  # fmt: skip


def write_bert_vocab(folder: Path) -> Path:
    """A BERT wordpiece vocab.txt: specials, the letters (so any word tokenizes), a few words."""
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *[f"##{c}" for c in letters]]
    vocab += [w for w in WORDS if w not in vocab]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder / "vocab.txt"


def build_tiny_ldm_text2img(path: Path, seed: int = 0) -> Path:
    """Write a random LDMTextToImagePipeline folder and return its path."""
    from diffusers import AutoencoderKL, DDIMScheduler, LDMTextToImagePipeline, UNet2DConditionModel
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import (
        LDMBertConfig,
        LDMBertModel,
    )
    from transformers import BertTokenizer

    torch.manual_seed(seed)
    tokenizer = BertTokenizer(str(write_bert_vocab(path.parent / f".{path.name}-vocab")))
    bert = LDMBertModel(LDMBertConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, encoder_ffn_dim=37,
        encoder_attention_heads=2, head_dim=8,
    ))  # fmt: skip
    unet = UNet2DConditionModel(**tiny_unet_config())
    vqvae = AutoencoderKL(  # f = 8, as the pipeline's latent shape (height // 8) assumes
        block_out_channels=(8, 8, 16, 16), latent_channels=4, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
    )  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )  # fmt: skip
    pipe = LDMTextToImagePipeline(
        vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=scheduler
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path
