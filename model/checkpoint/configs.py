"""Network configs <-> diffusers `config.json` dicts, and inference of configs from key shapes."""

from __future__ import annotations

import re
from typing import Any

import torch

from model.autoencoder import AutoencoderConfig
from model.unet import UNetConfig

UNSUPPORTED_UNET = {  # diffusers options this UNet does not implement, with the value we require
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "act_fn": "silu",
    "class_embed_type": None,
    "addition_embed_type": None,
    "time_embedding_type": "positional",
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "dual_cross_attention": False,
    "center_input_sample": False,
    "resnet_time_scale_shift": "default",
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "encoder_hid_dim": None,
}


def unet_config_from_diffusers(d: dict[str, Any]) -> UNetConfig:
    """UNetConfig from a diffusers UNet2DConditionModel config, refusing what we can't run."""
    for key, required in UNSUPPORTED_UNET.items():
        if key in d and d[key] != required:
            raise ValueError(f"unsupported UNet config: {key}={d[key]!r} (need {required!r})")
    channels = list(d["block_out_channels"])
    levels = len(channels)
    down = list(d["down_block_types"])
    attention = tuple(kind.startswith("CrossAttn") for kind in down)
    up = [kind.startswith("CrossAttn") for kind in d["up_block_types"]]
    if tuple(reversed(up)) != attention:
        raise ValueError("up_block_types must mirror down_block_types")
    heads = d.get("num_attention_heads") or d.get("attention_head_dim", 8)  # diffusers' misnomer
    heads = tuple(heads) if isinstance(heads, list | tuple) else (heads,) * levels
    depth = d.get("transformer_layers_per_block", 1)
    cross = d.get("cross_attention_dim", 768)
    if not isinstance(depth, int) or not isinstance(cross, int):
        raise ValueError("per-block transformer depth or cross_attention_dim is not supported")
    if any(c % channels[0] for c in channels):
        raise ValueError(f"block_out_channels {channels} are not multiples of the first")
    if d.get("mid_block_only_cross_attention"):
        raise ValueError("unsupported UNet config: mid_block_only_cross_attention=True")
    cross_only = d.get("only_cross_attention", False)
    cross_only = (cross_only,) * levels if isinstance(cross_only, bool) else tuple(cross_only)
    return UNetConfig(
        in_channels=d.get("in_channels", 4),
        out_channels=d.get("out_channels", 4),
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=d.get("layers_per_block", 2),
        attention_levels=attention,
        num_heads=heads,
        context_dim=cross,
        transformer_depth=depth,
        use_linear_projection=bool(d.get("use_linear_projection", False)),
        norm_groups=d.get("norm_num_groups", 32),
        upcast_attention=bool(d.get("upcast_attention")),
        cross_attention_only=cross_only if any(cross_only) else (),
        num_classes=d.get("num_class_embeds"),
        sample_size=d.get("sample_size"),
    )


def unet_config_to_diffusers(c: UNetConfig) -> dict[str, Any]:
    """The diffusers UNet2DConditionModel config.json for a UNetConfig."""
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.attention_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.attention_levels)]
    return {
        "_class_name": "UNet2DConditionModel",
        "sample_size": c.sample_size or 64,
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "block_out_channels": [c.model_channels * m for m in c.channel_mult],
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": c.num_res_blocks,
        "attention_head_dim": list(c.num_heads),
        "cross_attention_dim": c.context_dim,
        "transformer_layers_per_block": c.transformer_depth,
        "use_linear_projection": c.use_linear_projection,
        "norm_num_groups": c.norm_groups,
        "upcast_attention": c.upcast_attention,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "act_fn": "silu",
        "norm_eps": 1e-5,
        "only_cross_attention": [bool(x) for x in c.cross_attention_only] or False,
        "num_class_embeds": c.num_classes,
    }


UNSUPPORTED_UNET2D = {  # UNet2DModel options this UNet does not implement, with the value we need
    "flip_sin_to_cos": True, "freq_shift": 0, "act_fn": "silu", "class_embed_type": None,
    "num_class_embeds": None, "time_embedding_type": "positional", "time_embedding_dim": None,
    "center_input_sample": False, "resnet_time_scale_shift": "default",
    "mid_block_type": "UNetMidBlock2D", "mid_block_scale_factor": 1, "add_attention": True,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "norm_eps": 1e-5,
}  # fmt: skip
UNET2D_BLOCKS = {"DownBlock2D": False, "AttnDownBlock2D": True}  # down block -> has attention
UNET2D_UP_BLOCKS = {"UpBlock2D": False, "AttnUpBlock2D": True}


def unet2d_config_from_diffusers(d: dict[str, Any]) -> UNetConfig:
    """UNetConfig (no text: self-attention blocks) from a diffusers UNet2DModel config (LDM's
    unconditional and concat-conditioned UNets), refusing what we can't run."""
    for key, required in UNSUPPORTED_UNET2D.items():
        if key in d and d[key] != required:
            raise ValueError(f"unsupported UNet2DModel: {key}={d[key]!r} (need {required!r})")
    groups = d.get("norm_num_groups", 32)
    if d.get("attn_norm_num_groups") not in (None, groups):
        raise ValueError("unsupported UNet2DModel: attn_norm_num_groups != norm_num_groups")
    down, up = list(d["down_block_types"]), list(d["up_block_types"])
    unknown = [k for k in down if k not in UNET2D_BLOCKS]
    unknown += [k for k in up if k not in UNET2D_UP_BLOCKS]
    if unknown:
        raise ValueError(f"unsupported UNet2DModel block types: {unknown}")
    attention = tuple(UNET2D_BLOCKS[kind] for kind in down)
    if tuple(UNET2D_UP_BLOCKS[kind] for kind in reversed(up)) != attention:
        raise ValueError("up_block_types must mirror down_block_types")
    channels = list(d["block_out_channels"])
    if any(c % channels[0] for c in channels):
        raise ValueError(f"block_out_channels {channels} are not multiples of the first")
    head_dim = d.get("attention_head_dim", 8)  # None: one head (diffusers' UNet2DModel)
    if head_dim is not None and any(c % head_dim for c in channels):
        raise ValueError(f"block_out_channels {channels} are not multiples of {head_dim}")
    return UNetConfig(
        in_channels=d.get("in_channels", 3),
        out_channels=d.get("out_channels", 3),
        model_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=d.get("layers_per_block", 2),
        attention_levels=attention,
        num_heads=tuple(1 if head_dim is None else c // head_dim for c in channels),
        context_dim=None,
        norm_groups=groups,
        sample_size=d.get("sample_size"),
    )


def vq_config_from_diffusers(d: dict[str, Any]) -> tuple[AutoencoderConfig, int]:
    """AutoencoderConfig and codebook size from a diffusers VQModel config (its defaults)."""
    latent = d.get("latent_channels", 3)
    for key, required in (("vq_embed_dim", latent), ("norm_type", "group"), ("act_fn", "silu"),
                          ("mid_block_add_attention", True)):  # fmt: skip
        if d.get(key) not in (None, required):
            raise ValueError(f"unsupported VQModel config: {key}={d[key]!r} (need {required!r})")
    kinds = set(d.get("down_block_types", ["DownEncoderBlock2D"]))
    kinds |= set(d.get("up_block_types", ["UpDecoderBlock2D"]))
    if kinds != {"DownEncoderBlock2D", "UpDecoderBlock2D"}:
        raise ValueError(f"unsupported VQModel block types: {sorted(kinds)}")
    channels = list(d.get("block_out_channels", [64]))
    config = AutoencoderConfig(
        in_channels=d.get("in_channels", 3),
        out_channels=d.get("out_channels", 3),
        base_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=d.get("layers_per_block", 1),
        latent_channels=latent,
        norm_groups=d.get("norm_num_groups", 32),
        scaling_factor=d.get("scaling_factor", 0.18215),
    )
    return config, d.get("num_vq_embeddings", 256)


def vae_config_from_diffusers(d: dict[str, Any]) -> AutoencoderConfig:
    """AutoencoderConfig from a diffusers AutoencoderKL config."""
    if d.get("mid_block_add_attention", True) is not True:
        raise ValueError("autoencoders without mid-block attention are not supported")
    channels = list(d["block_out_channels"])
    return AutoencoderConfig(
        in_channels=d.get("in_channels", 3),
        out_channels=d.get("out_channels", 3),
        base_channels=channels[0],
        channel_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=d.get("layers_per_block", 2),
        latent_channels=d.get("latent_channels", 4),
        norm_groups=d.get("norm_num_groups", 32),
        scaling_factor=d.get("scaling_factor", 0.18215),
    )


def vae_config_to_diffusers(c: AutoencoderConfig) -> dict[str, Any]:
    """The diffusers AutoencoderKL config.json for an AutoencoderConfig."""
    levels = len(c.channel_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "latent_channels": c.latent_channels,
        "block_out_channels": [c.base_channels * m for m in c.channel_mult],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": c.num_res_blocks,
        "norm_num_groups": c.norm_groups,
        "scaling_factor": c.scaling_factor,
        "act_fn": "silu",
        "sample_size": 64,
    }


def _indices(keys: list[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def infer_unet_config(sd: dict[str, torch.Tensor], context_dim: int | None = None) -> UNetConfig:
    """Read a CompVis UNet's structure off its key shapes (SD 1.x/2.x head conventions)."""
    keys = list(sd)
    mc = sd["input_blocks.0.0.weight"].shape[0]
    blocks = _indices(keys, r"input_blocks\.(\d+)\.")
    down = [b for b in blocks if f"input_blocks.{b}.0.op.weight" in sd]
    num_res = down[0] - 1 if down else len(blocks) - 1
    mults, attention = [], []
    for level in range(len(down) + 1):
        first = 1 + level * (num_res + 1)
        mults.append(sd[f"input_blocks.{first}.0.in_layers.2.weight"].shape[0] // mc)
        attention.append(f"input_blocks.{first}.1.proj_in.weight" in sd)
    attn2 = next(k for k in keys if k.endswith("attn2.to_k.weight"))
    context = context_dim or sd[attn2].shape[1]
    proj = next(k for k in keys if k.endswith("proj_in.weight"))
    channels = [mc * m for m in mults]
    attn1 = [
        sd.get(f"input_blocks.{1 + level * (num_res + 1)}.1.transformer_blocks.0.attn1.to_k.weight")
        for level in range(len(mults))
    ]  # (inner, in) per level, None where the level has no attention
    # attn1 reading the context (its input width differs): the x4 upscaler's cross-only levels
    cross_only = tuple(
        w is not None and w.shape[1] != mc * m for w, m in zip(attn1, mults, strict=True)
    )
    classes = sd["label_emb.weight"].shape[0] if "label_emb.weight" in sd else None
    # SD 1.x and the x4 upscaler use 8 heads everywhere; SD 2.x uses 64-channel heads.
    eight = context == 768 or classes is not None
    heads = tuple(8 for _ in channels) if eight else tuple(c // 64 for c in channels)
    return UNetConfig(
        in_channels=sd["input_blocks.0.0.weight"].shape[1],
        out_channels=sd["out.2.weight"].shape[0],
        model_channels=mc,
        channel_mult=tuple(mults),
        num_res_blocks=num_res,
        attention_levels=tuple(attention),
        num_heads=heads,
        context_dim=context,
        use_linear_projection=sd[proj].ndim == 2,
        upcast_attention=context == 1024 and classes is None,  # SD 2.x, not the upscaler
        cross_attention_only=cross_only if any(cross_only) else (),
        num_classes=classes,
    )


def infer_vae_config(sd: dict[str, torch.Tensor]) -> AutoencoderConfig:
    """Read a CompVis autoencoder's structure off its key shapes."""
    keys = list(sd)
    base = sd["encoder.conv_in.weight"].shape[0]
    levels = _indices(keys, r"encoder\.down\.(\d+)\.")
    num_res = len(_indices(keys, r"encoder\.down\.0\.block\.(\d+)\."))
    mults = tuple(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // base for i in levels)
    return AutoencoderConfig(
        in_channels=sd["encoder.conv_in.weight"].shape[1],
        out_channels=sd["decoder.conv_out.weight"].shape[0],
        base_channels=base,
        channel_mult=mults,
        num_res_blocks=num_res,
        latent_channels=sd["post_quant_conv.weight"].shape[0],
    )
