"""SD 2.x text encoders: OpenCLIP ViT-H weights -> transformers CLIPTextModel (penultimate)."""

from __future__ import annotations

import re

import torch
from transformers import CLIPTextConfig

OPEN_CLIP_PREFIX = "cond_stage_model.model."
RENAMES = [  # OpenCLIP resblock names -> HF CLIP encoder layer names
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("attn.out_proj.", "self_attn.out_proj."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
]


def convert_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and split (fused qkv) OpenCLIP text weights; drop the last block (SD 2 uses -2)."""
    layers = 1 + max(
        int(m.group(1)) for k in sd if (m := re.match(r"transformer\.resblocks\.(\d+)\.", k))
    )
    out = {
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
    }
    for i in range(layers - 1):  # penultimate: the last resblock is unused by SD 2.x
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = sd[f"{src}attn.in_proj_{kind}"].chunk(3, dim=0)  # (3D, ...) -> 3 x (D, ...)
            out[f"{dst}self_attn.q_proj.{kind}"] = q
            out[f"{dst}self_attn.k_proj.{kind}"] = k
            out[f"{dst}self_attn.v_proj.{kind}"] = v
        for old, new in RENAMES:
            for kind in ("weight", "bias"):
                out[f"{dst}{new}{kind}"] = sd[f"{src}{old}{kind}"]
    return out


def sd2_text_config(text_sd: dict[str, torch.Tensor]) -> CLIPTextConfig:
    """The CLIPTextConfig matching converted OpenCLIP weights (ViT-H: 1024 wide, 16 heads)."""
    width = text_sd["text_model.final_layer_norm.weight"].shape[0]
    layers = 1 + max(
        int(m.group(1))
        for k in text_sd
        if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))
    )
    return CLIPTextConfig(
        vocab_size=text_sd["text_model.embeddings.token_embedding.weight"].shape[0],
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        hidden_act="gelu",
        projection_dim=512,
    )
