"""Writing the diffusers folders of the LDM paper's pipelines (ldm_folders.py reads them):
LDMTextToImagePipeline (`bert/` as transformers writes LDMBertModel, `tokenizer/`, `unet/`, a KL
`vqvae/`), LDMPipeline and LDMSuperResolutionPipeline (UNet2DModel `unet/`, VQModel `vqvae/`)
and ldm-serve's LDMClassConditionalPipeline (UNet2DConditionModel, VQModel, `class_embedder/`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from model.autoencoder import AutoencoderConfig
from model.checkpoint import configs, keymap
from model.checkpoint.compvis import paper_kind
from model.checkpoint.diffusers_folder import WEIGHT_NAMES, schedule_to_diffusers
from model.checkpoint.files import CheckpointError, write_safetensors
from model.checkpoint.ldm_folders import (
    BERT_WEIGHTS,
    CLASS_CONDITIONAL,
    CLASS_EMBEDDER_WEIGHTS,
    SUPER_RESOLUTION,
    TEXT_TO_IMAGE,
    UNCONDITIONAL,
)
from model.components import Components
from model.ldm_bert import LDMBert
from model.unet import UNet, UNetConfig
from model.vq import VQAutoencoder

DIFFUSERS = "0.30.0"  # the _diffusers_version written (as diffusers_folder.MODEL_INDEX)
BERT_FIXED = {  # LDMBertConfig fields that do not shape the network, at diffusers' defaults
    "architectures": ["LDMBertModel"], "model_type": "ldmbert", "activation_dropout": 0.0,
    "attention_dropout": 0.0, "classifier_dropout": 0.0, "dropout": 0.1,
    "encoder_layerdrop": 0.0, "init_std": 0.02, "pad_token_id": 0, "scale_embedding": False,
    "use_cache": True,
}  # fmt: skip


def save_ldm_folder(
    components: Components,
    path: Path,
    dtype: torch.dtype = torch.float16,
    latent_size: int | None = None,
) -> Path:
    """Write the folder of the paper pipeline `components` is (`latent_size`: the UNet's
    sample_size, which LDMPipeline samples at; 64 when unknown) and return its path."""
    kind = paper_kind(components)
    if kind is None:
        raise CheckpointError("not one of the paper's models: Stable Diffusion folders are "
                              "written by diffusers_folder.save_diffusers")  # fmt: skip
    c = components
    size = latent_size or c.unet.config.sample_size or 64
    text, vq = kind == TEXT_TO_IMAGE, isinstance(c.vae, VQAutoencoder)
    if text == vq and kind != UNCONDITIONAL:  # unconditional models come with either
        raise CheckpointError(f"{kind} folders hold a {'KL' if text else 'VQ'} autoencoder; "
                              f"this model has a {'VQ' if vq else 'KL'} one")  # fmt: skip
    if kind == SUPER_RESOLUTION and c.vae.config.scaling_factor != 1.0:
        raise CheckpointError("LDMSuperResolutionPipeline decodes unscaled latents; this model "
                              f"scales them by {c.vae.config.scaling_factor}")  # fmt: skip
    path.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": kind, "_diffusers_version": DIFFUSERS,
                             "scheduler": ["diffusers", "DDIMScheduler"]}  # fmt: skip
    crossattn = c.unet.config.context_dim is not None
    unet_class = "UNet2DConditionModel" if crossattn else "UNet2DModel"
    _write(path / "unet", _unet_config(c.unet.config, size), _unet_weights(c.unet, dtype))
    index["unet"] = ["diffusers", unet_class]
    if vq:
        vae_config = _vq_config(c.vae.config, c.vae.quantize.embedding.num_embeddings)
        table = keymap.vq_prefixes(c.vae.config)
    else:
        vae_config = configs.vae_config_to_diffusers(c.vae.config)
        table = keymap.vae_prefixes(c.vae.config)
    tensors = {k: v.to(dtype) for k, v in c.vae.state_dict().items()}
    _write(path / "vqvae", vae_config, keymap.diffusers_from_compvis(tensors, table))
    index["vqvae"] = ["diffusers", "VQModel" if vq else "AutoencoderKL"]
    if text:
        _write_bert(path / "bert", c.text_encoder, dtype)
        c.tokenizer.save_pretrained(path / "tokenizer")
        index |= {"bert": ["latent_diffusion", "LDMBertModel"],
                  "tokenizer": ["transformers", "BertTokenizer"]}  # fmt: skip
    if kind == CLASS_CONDITIONAL:
        folder = path / "class_embedder"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(c.class_embedder.config.to_dict(), indent=2))
        table = {k: v.to(dtype) for k, v in c.class_embedder.state_dict().items()}
        write_safetensors(table, folder / CLASS_EMBEDDER_WEIGHTS)
        index["class_embedder"] = ["ldm_serve", "ClassEmbedder"]
    (path / "scheduler").mkdir(exist_ok=True)
    (path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(schedule_to_diffusers(c.schedule), indent=2)
    )
    (path / "model_index.json").write_text(json.dumps(index, indent=2))
    return path


def _write(folder: Path, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_safetensors(tensors, folder / WEIGHT_NAMES[0])


def _unet_config(u: UNetConfig, size: int) -> dict[str, Any]:
    """UNet2DConditionModel's config.json for cross-attention UNets, else UNet2DModel's."""
    if u.context_dim is not None:
        return configs.unet_config_to_diffusers(u) | {"sample_size": size}
    last = len(u.channel_mult) - 1
    used = [i for i in range(last + 1) if u.attention_levels[i] or i == last]  # mid: last level
    widths = {u.heads_and_dim(i)[1] for i in used}
    if all(u.num_heads[i] == 1 for i in used):
        head_dim = None  # UNet2DModel: one head per block
    elif len(widths) == 1:
        head_dim = widths.pop()
    else:
        raise CheckpointError(f"heads {u.num_heads} are neither one per block nor of one width: "
                              "diffusers' UNet2DModel cannot hold them")  # fmt: skip
    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in u.attention_levels]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(u.attention_levels)]
    return {
        "_class_name": "UNet2DModel", "sample_size": size, "in_channels": u.in_channels,
        "out_channels": u.out_channels, "layers_per_block": u.num_res_blocks,
        "block_out_channels": [u.model_channels * m for m in u.channel_mult],
        "down_block_types": down, "up_block_types": up, "attention_head_dim": head_dim,
        "norm_num_groups": u.norm_groups, "norm_eps": 1e-5, "act_fn": "silu",
        "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_type": "UNetMidBlock2D",
        "add_attention": True, "downsample_padding": 1, "center_input_sample": False,
        "time_embedding_type": "positional", "resnet_time_scale_shift": "default",
    }  # fmt: skip


def _unet_weights(unet: UNet, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """diffusers names; CompVis' fused qkv (1x1 Conv1d, rows per head [q; k; v]) split into
    the Linear to_q/to_k/to_v of diffusers' Attention (keymap.fuse_qkv, inverted)."""
    tensors = {k: v.to(dtype) for k, v in unet.state_dict().items()}
    out = keymap.diffusers_from_compvis(tensors, keymap.unet_prefixes(unet.config))
    for prefix, heads in keymap.attention_heads(unet.config).items():
        for kind in ("weight", "bias"):
            fused = out.pop(f"{prefix}to_qkv.{kind}")  # (3C, C, 1) or (3C,)
            fused = fused[..., 0] if kind == "weight" else fused  # (3C, C) or (3C,)
            rows = fused.reshape(heads, 3, -1, *fused.shape[1:])  # (h, qkv, d, ...)
            for i, name in enumerate(("to_q", "to_k", "to_v")):
                out[f"{prefix}{name}.{kind}"] = rows[:, i].reshape(-1, *fused.shape[1:])
        out[f"{prefix}to_out.0.weight"] = out[f"{prefix}to_out.0.weight"][..., 0]  # (C, C)
    return out


def _vq_config(a: AutoencoderConfig, codes: int) -> dict[str, Any]:
    """diffusers' VQModel config.json (vq_config_from_diffusers' inverse)."""
    levels = len(a.channel_mult)
    return {
        "_class_name": "VQModel", "in_channels": a.in_channels, "out_channels": a.out_channels,
        "latent_channels": a.latent_channels, "vq_embed_dim": a.latent_channels,
        "num_vq_embeddings": codes,
        "block_out_channels": [a.base_channels * m for m in a.channel_mult],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels, "layers_per_block": a.num_res_blocks,
        "norm_num_groups": a.norm_groups, "act_fn": "silu", "norm_type": "group",
        "mid_block_add_attention": True, "scaling_factor": a.scaling_factor, "sample_size": 32,
    }  # fmt: skip


def _write_bert(folder: Path, bert: LDMBert, dtype: torch.dtype) -> None:
    """`bert/` as transformers' save_pretrained writes LDMBertModel (which diffusers loads)."""
    folder.mkdir(parents=True, exist_ok=True)
    c = bert.config
    config = BERT_FIXED | dataclasses.asdict(c) | {"num_hidden_layers": c.encoder_layers}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.to(dtype) for k, v in bert.state_dict().items()}
    write_safetensors(tensors, folder / BERT_WEIGHTS[0], {"format": "pt"})
