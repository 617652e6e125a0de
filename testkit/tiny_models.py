"""Tiny random Stable-Diffusion-layout models for tests, built with diffusers (test-only oracle).

`build_tiny_sd(path)` writes a complete diffusers folder (UNet, VAE, CLIP text encoder, a small CLIP
BPE tokenizer written here, DDIM scheduler config) that loads in well under a second.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def write_tiny_clip_tokenizer(folder: Path) -> Path:
    """A character-level CLIP BPE tokenizer (vocab.json + merges.txt) that CLIPTokenizer loads."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits + ",.!?'-"
    tokens = list(chars) + [c + "</w>" for c in chars]
    merges = ["a t</w>"]  # one merge so the BPE path is exercised
    vocab = {tok: i for i, tok in enumerate(SPECIALS + tokens + ["at</w>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def tiny_unet_config(cross_attention_dim: int = 32, linear: bool = False) -> dict:
    return dict(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=(2, 4),
        norm_num_groups=8,
        use_linear_projection=linear,
    )


def build_tiny_sd(
    path: Path,
    prediction_type: str = "epsilon",
    seed: int = 0,
    linear: bool = False,
    unet: dict | None = None,
    vae: dict | None = None,
    text: dict | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random SD pipeline in the diffusers folder layout and return its path.

    `unet`, `vae` and `text` override the tiny configs (bench/random_models.py builds a mid-size
    model, bench/gpu_models.py an SD 1.5-size one: built on `device`, where random init is fast,
    and saved in `dtype`).
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    with torch.device(device):  # random init where it is fast (an SD-size UNet on a GPU)
        unet_model = UNet2DConditionModel(**(unet or tiny_unet_config(linear=linear)))
        vae_model = AutoencoderKL(
            **(
                vae
                or dict(
                    block_out_channels=(16, 32),
                    in_channels=3,
                    out_channels=3,
                    latent_channels=4,
                    down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2,
                    norm_num_groups=8,
                    layers_per_block=1,
                )
            )
        )
        tokenizer, text_encoder = tiny_text_encoder(path, text)
    unet_model, vae_model, text_encoder = (
        m.to(dtype) for m in (unet_model, vae_model, text_encoder)
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(
        unet=unet_model,
        vae=vae_model,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def tiny_text_encoder(path: Path, text: dict | None = None):  # noqa: ANN201 - (tokenizer, model)
    """A tiny random CLIP text encoder and its character-level tokenizer (`text` overrides)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tokenizer_dir = write_tiny_clip_tokenizer(path.parent / f".{path.name}-tokenizer")
    tokenizer = CLIPTokenizer(
        str(tokenizer_dir / "vocab.json"),
        str(tokenizer_dir / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    tiny_text = dict(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3
    )
    text_config = CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{
            "vocab_size": len(tokenizer) + 2,
            "max_position_embeddings": 77,
            **(text or tiny_text),
        },
    )
    text_encoder = CLIPTextModel(text_config)
    return tokenizer, text_encoder


def tiny_upscaler_unet_config() -> dict:
    """The SD x4 upscaler's UNet layout, tiny: 7 input channels (latent + low-res RGB), the noise
    level as a class embedding, cross-attention-only attention except at the lowest level."""
    return dict(
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=7,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=(True, True, False),
        num_class_embeds=1000,
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 4),
        norm_num_groups=8,
        use_linear_projection=True,
    )


def build_tiny_upscaler(
    path: Path,
    seed: int = 0,
    unet: dict | None = None,
    vae: dict | None = None,
    text: dict | None = None,
) -> Path:
    """Write a random StableDiffusionUpscalePipeline folder (f=4 VAE, v-prediction DDIM, a DDPM
    low-res scheduler, max_noise_level 350) and return its path; `unet`, `vae` and `text`
    override the tiny configs (bench/upscale.py builds a mid-size one)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet_model = UNet2DConditionModel(**(unet or tiny_upscaler_unet_config()))
    vae_model = AutoencoderKL(
        **(
            vae
            or dict(
                block_out_channels=(16, 16, 32),
                latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3,
                norm_num_groups=8,
                layers_per_block=1,
                scaling_factor=0.08333,
            )
        )
    )
    tokenizer, text_encoder = tiny_text_encoder(path, text)
    scheduler = DDIMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
        timestep_spacing="leading",
    )  # fmt: skip
    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    pipe = StableDiffusionUpscalePipeline(
        vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_model,
        low_res_scheduler=low_res, scheduler=scheduler, max_noise_level=350,
    )  # fmt: skip
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path
