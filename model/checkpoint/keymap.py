"""Explicit rename tables between diffusers names and the CompVis names our modules use.

Each table is a list of (compvis_prefix, diffusers_prefix) pairs built from the network config;
`rename` applies the longest matching prefix, then the per-block renames.
"""

from __future__ import annotations

import torch

from model.autoencoder import AutoencoderConfig
from model.unet import UNetConfig

RESNET_RENAMES = [  # CompVis ResBlock -> diffusers ResnetBlock2D (UNet)
    ("in_layers.0.", "norm1."),
    ("in_layers.2.", "conv1."),
    ("emb_layers.1.", "time_emb_proj."),
    ("out_layers.0.", "norm2."),
    ("out_layers.3.", "conv2."),
    ("skip_connection.", "conv_shortcut."),
]
VAE_RESNET_RENAMES = [("nin_shortcut.", "conv_shortcut.")]
# CompVis AttentionBlock -> diffusers' UNet2DModel Attention; `to_qkv` stands for to_q, to_k and
# to_v fused in CompVis's layout (`fuse_qkv`), which no diffusers file holds.
ATTENTION_BLOCK_RENAMES = [
    ("norm.", "group_norm."),
    ("qkv.", "to_qkv."),
    ("proj_out.", "to_out.0."),
]
VAE_ATTENTION_RENAMES = [
    ("norm.", "group_norm."),
    ("q.", "to_q."),
    ("k.", "to_k."),
    ("v.", "to_v."),
    ("proj_out.", "to_out.0."),
]


def unet_prefixes(config: UNetConfig) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(compvis_prefix, diffusers_prefix, inner renames) for every UNet submodule."""
    n = config.num_res_blocks
    levels = len(config.channel_mult)
    attention = [] if config.context_dim is not None else ATTENTION_BLOCK_RENAMES
    table: list[tuple[str, str, list[tuple[str, str]]]] = [
        ("time_embed.0.", "time_embedding.linear_1.", []),
        ("time_embed.2.", "time_embedding.linear_2.", []),
        ("input_blocks.0.0.", "conv_in.", []),
        ("out.0.", "conv_norm_out.", []),
        ("out.2.", "conv_out.", []),
        ("middle_block.0.", "mid_block.resnets.0.", RESNET_RENAMES),
        ("middle_block.1.", "mid_block.attentions.0.", attention),
        ("middle_block.2.", "mid_block.resnets.1.", RESNET_RENAMES),
        ("label_emb.", "class_embedding.", []),
    ]
    for i in range(levels):
        for j in range(n):
            block = 1 + i * (n + 1) + j
            table.append(
                (f"input_blocks.{block}.0.", f"down_blocks.{i}.resnets.{j}.", RESNET_RENAMES)
            )
            if config.attention_levels[i]:
                row = (f"input_blocks.{block}.1.", f"down_blocks.{i}.attentions.{j}.", attention)
                table.append(row)
        if i < levels - 1:
            table.append(
                (
                    f"input_blocks.{(i + 1) * (n + 1)}.0.op.",
                    f"down_blocks.{i}.downsamplers.0.conv.",
                    [],
                )
            )
        level = levels - 1 - i  # diffusers up_blocks run from the lowest resolution
        for j in range(n + 1):
            block = i * (n + 1) + j
            table.append(
                (f"output_blocks.{block}.0.", f"up_blocks.{i}.resnets.{j}.", RESNET_RENAMES)
            )
            if config.attention_levels[level]:
                row = (f"output_blocks.{block}.1.", f"up_blocks.{i}.attentions.{j}.", attention)
                table.append(row)
        if i < levels - 1:
            slot = 2 if config.attention_levels[level] else 1
            table.append(
                (f"output_blocks.{i * (n + 1) + n}.{slot}.", f"up_blocks.{i}.upsamplers.0.", [])
            )
    return table


def vae_prefixes(config: AutoencoderConfig) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(compvis_prefix, diffusers_prefix, inner renames) for every autoencoder submodule."""
    levels = len(config.channel_mult)
    table: list[tuple[str, str, list[tuple[str, str]]]] = []
    for part in ("encoder", "decoder"):
        table += [
            (f"{part}.conv_in.", f"{part}.conv_in.", []),
            (f"{part}.conv_out.", f"{part}.conv_out.", []),
            (f"{part}.norm_out.", f"{part}.conv_norm_out.", []),
            (f"{part}.mid.block_1.", f"{part}.mid_block.resnets.0.", VAE_RESNET_RENAMES),
            (f"{part}.mid.block_2.", f"{part}.mid_block.resnets.1.", VAE_RESNET_RENAMES),
            (f"{part}.mid.attn_1.", f"{part}.mid_block.attentions.0.", VAE_ATTENTION_RENAMES),
        ]
    for i in range(levels):
        for j in range(config.num_res_blocks):
            table.append(
                (
                    f"encoder.down.{i}.block.{j}.",
                    f"encoder.down_blocks.{i}.resnets.{j}.",
                    VAE_RESNET_RENAMES,
                )
            )
        table.append(
            (f"encoder.down.{i}.downsample.", f"encoder.down_blocks.{i}.downsamplers.0.", [])
        )
        up = levels - 1 - i  # diffusers decoder.up_blocks run from the lowest resolution
        for j in range(config.num_res_blocks + 1):
            table.append(
                (
                    f"decoder.up.{up}.block.{j}.",
                    f"decoder.up_blocks.{i}.resnets.{j}.",
                    VAE_RESNET_RENAMES,
                )
            )
        table.append((f"decoder.up.{up}.upsample.", f"decoder.up_blocks.{i}.upsamplers.0.", []))
    table += [("quant_conv.", "quant_conv.", []), ("post_quant_conv.", "post_quant_conv.", [])]
    return table


def vq_prefixes(config: AutoencoderConfig) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """The autoencoder's table plus the codebook (VQModel's `quantize.embedding`)."""
    return [*vae_prefixes(config), ("quantize.", "quantize.", [])]


def attention_heads(config: UNetConfig) -> dict[str, int]:
    """Heads of each self-attention block of a UNet without text, by diffusers prefix."""
    if config.context_dim is not None:
        return {}
    n, levels = config.num_res_blocks, len(config.channel_mult)
    heads = {"mid_block.attentions.0.": config.num_heads[-1]}
    for level in range(levels):
        if config.attention_levels[level]:
            up = levels - 1 - level  # diffusers up_blocks run from the lowest resolution
            heads |= {f"down_blocks.{level}.attentions.{j}.": config.num_heads[level]
                      for j in range(n)}  # fmt: skip
            heads |= {f"up_blocks.{up}.attentions.{j}.": config.num_heads[level]
                      for j in range(n + 1)}  # fmt: skip
    return heads


def fuse_qkv(source: dict[str, torch.Tensor], heads: dict[str, int]) -> dict[str, torch.Tensor]:
    """diffusers' Linear to_q/to_k/to_v/to_out.0 of the blocks in `heads` -> CompVis's 1x1 Conv1d
    `to_qkv` (rows per head: that head's [q; k; v], QKVAttentionLegacy's layout) and `to_out.0`."""
    out = dict(source)
    for prefix, h in heads.items():
        for kind in ("weight", "bias"):
            q, k, v = (out.pop(f"{prefix}{name}.{kind}") for name in ("to_q", "to_k", "to_v"))
            parts = [t.reshape(h, t.shape[0] // h, *t.shape[1:]) for t in (q, k, v)]  # (h, d, ...)
            fused = torch.stack(parts, dim=1).flatten(0, 2)  # (3C, ...) in order (h, qkv, d)
            out[f"{prefix}to_qkv.{kind}"] = fused[..., None] if kind == "weight" else fused
        out[f"{prefix}to_out.0.weight"] = out[f"{prefix}to_out.0.weight"][..., None]  # (C, C, 1)
    return out


def to_diffusers_key(key: str, table: list[tuple[str, str, list[tuple[str, str]]]]) -> str:
    """Rename one CompVis key to its diffusers name (longest prefix wins)."""
    best = max(
        (row for row in table if key.startswith(row[0])), key=lambda r: len(r[0]), default=None
    )
    if best is None:
        raise KeyError(f"no diffusers name known for {key!r}")
    compvis, diffusers, inner = best
    rest = key[len(compvis) :]
    for old, new in inner:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return diffusers + rest


def is_vae_attention_matrix(key: str) -> bool:
    """VAE attention q/k/v/out are 1x1 convs in CompVis and Linear layers in diffusers."""
    return ".mid.attn_1." in key and key.endswith(".weight") and ".norm." not in key


def compvis_from_diffusers(
    names: list[str], source: dict[str, torch.Tensor], table: list[tuple[str, str, list]]
) -> dict[str, torch.Tensor]:
    """Build a CompVis-named state dict for `names` from a diffusers-named one, strictly."""
    wanted = {name: to_diffusers_key(name, table) for name in names}
    missing = sorted(d for d in wanted.values() if d not in source)
    unexpected = sorted(set(source) - set(wanted.values()))
    if missing or unexpected:
        raise KeyError(_describe(missing, unexpected))
    out = {}
    for name, diffusers_name in wanted.items():
        tensor = source[diffusers_name]
        if is_vae_attention_matrix(name) and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # Linear (C, C) -> 1x1 conv (C, C, 1, 1)
        out[name] = tensor
    return out


def diffusers_from_compvis(
    source: dict[str, torch.Tensor], table: list[tuple[str, str, list]]
) -> dict[str, torch.Tensor]:
    """Rename a CompVis-named state dict to diffusers names."""
    out = {}
    for name, tensor in source.items():
        if is_vae_attention_matrix(name) and tensor.ndim == 4:
            tensor = tensor[:, :, 0, 0]  # 1x1 conv -> Linear
        out[to_diffusers_key(name, table)] = tensor
    return out


def _describe(missing: list[str], unexpected: list[str], limit: int = 8) -> str:
    """A readable message naming missing and unexpected checkpoint keys."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys, e.g. {missing[:limit]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:limit]}")
    return "; ".join(parts)
