"""Tiny random models of the LDM paper's own pipelines, built with diffusers (test-only oracle):
`build_tiny_ldm_text2img` writes an `LDMTextToImagePipeline` folder (LDMBert over a small BERT
wordpiece vocabulary written here, a cross-attention UNet, an f=8 KL autoencoder, DDIM);
`build_tiny_ldm_uncond` an `LDMPipeline` and `build_tiny_ldm_superres` an
`LDMSuperResolutionPipeline` folder (a UNet2DModel with self-attention, a VQ-f4 autoencoder)."""

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


def tiny_unet2d_config(in_channels: int = 3) -> dict:
    """A UNet2DModel without text: self-attention (4 heads of 16) at the lower level and in the
    middle, as LDM's unconditional and super-resolution UNets (CompVis AttentionBlock)."""
    return dict(
        sample_size=8, in_channels=in_channels, out_channels=3, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=16, norm_num_groups=8,
    )  # fmt: skip


def tiny_vq(scaling_factor: float = 0.18215):  # noqa: ANN201 - diffusers' VQModel
    """A VQ-f4 autoencoder (3 latent channels, 64 codes). diffusers initialises the codebook
    within +-1/64, where every latent would snap to one of a few codes: spread it to N(0, I)."""
    from diffusers import VQModel

    vqvae = VQModel(
        block_out_channels=(16, 32, 32), latent_channels=3, num_vq_embeddings=64,
        norm_num_groups=8, layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=scaling_factor,
    )  # fmt: skip
    torch.nn.init.normal_(vqvae.quantize.embedding.weight)
    return vqvae


def tiny_ldm_scheduler():  # noqa: ANN201 - diffusers' DDIMScheduler
    """DDIM with the schedule of the paper's LDM-VQ-4 models (DDIMScheduler's other defaults)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                         clip_sample=False)  # fmt: skip


def build_tiny_ldm_uncond(path: Path, seed: int = 0) -> Path:
    """Write a random LDMPipeline folder (unconditional: UNet2DModel on VQ-f4 latents; the VQ
    config's scaling factor 0.5, which the pipeline divides by) and return its path."""
    from diffusers import LDMPipeline, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**tiny_unet2d_config())
    pipe = LDMPipeline(vqvae=tiny_vq(0.5), unet=unet, scheduler=tiny_ldm_scheduler())
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny_ldm_superres(path: Path, seed: int = 0) -> Path:
    """Write a random LDMSuperResolutionPipeline folder (LDM-SR: the UNet reads the latent and
    the low-res RGB image, in_channels 3 + 3; VQ-f4, decoded unscaled) and return its path."""
    from diffusers import LDMSuperResolutionPipeline, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**tiny_unet2d_config(in_channels=6))
    pipe = LDMSuperResolutionPipeline(vqvae=tiny_vq(), unet=unet, scheduler=tiny_ldm_scheduler())
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def build_tiny_ldm_classcond(path: Path, seed: int = 0, classes: int = 10) -> Path:
    """Write a random LDMClassConditionalPipeline folder (ldm-serve's layout of the paper's
    ImageNet LDM: a cross-attention UNet2DConditionModel over one class token, a table of
    `classes` + 1 rows whose last is the null class, a VQ-f4 autoencoder) and return its path."""
    import json

    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    dim = 32
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(32, 64),
        layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=dim,
        attention_head_dim=16, norm_num_groups=8,
    )  # fmt: skip
    unet.save_pretrained(str(path / "unet"), safe_serialization=True)
    tiny_vq(0.5).save_pretrained(str(path / "vqvae"), safe_serialization=True)
    tiny_ldm_scheduler().save_pretrained(str(path / "scheduler"))
    (path / "class_embedder").mkdir()
    table = torch.randn(classes + 1, dim)  # (classes + 1, D): row `classes` is the null class
    save_file({"embedding.weight": table}, str(path / "class_embedder" / "model.safetensors"))
    config = {"num_classes": classes + 1, "embed_dim": dim, "null_class": classes,
              "class_names": [f"class {i}" for i in range(classes)]}  # fmt: skip
    (path / "class_embedder" / "config.json").write_text(json.dumps(config))
    index = {"_class_name": "LDMClassConditionalPipeline", "unet": ["diffusers",
             "UNet2DConditionModel"], "vqvae": ["diffusers", "VQModel"],
             "class_embedder": ["ldm_serve", "ClassEmbedder"],
             "scheduler": ["diffusers", "DDIMScheduler"]}  # fmt: skip
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path
