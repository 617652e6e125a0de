"""LDM-KL-8-G's text encoder between CompVis' layout and LDMBert's (diffusers' port).

CompVis stores `BERTEmbedder.transformer`, a TransformerWrapper over an x_transformers
`Encoder(dim=n_embed, depth=n_layer)` (ldm/modules/x_transformer.py): layers alternate attention
('a') and feed-forward ('f'), each `ModuleList([LayerNorm, block, Residual])`, so layer 2i is
attention i (`to_q/to_k/to_v` without bias, `to_out`) and layer 2i+1 its feed-forward
(`net = Sequential(Sequential(Linear, GELU), Dropout, Linear)`: `net.0.0`, `net.2`). Heads and
widths are fixed by that code: 8 heads of 64 (DEFAULT_DIM_HEAD), a 4 x n_embed feed-forward,
as CompVis' own converter (stable-diffusion scripts/convert-diffusers.py) sets LDMBertConfig.
"""

from __future__ import annotations

import torch

from model.checkpoint.compvis_config import CondStageParams
from model.checkpoint.files import CheckpointError
from model.ldm_bert import LDMBertConfig

HEADS, HEAD_DIM, FF_MULT = 8, 64, 4  # x_transformers' Attention/FeedForward defaults
PREFIX = "cond_stage_model.transformer."


def bert_config(cond: CondStageParams) -> LDMBertConfig:
    """The LDMBertConfig of a BERTEmbedder(n_embed, n_layer, vocab_size, max_seq_len)."""
    return LDMBertConfig(
        vocab_size=cond.vocab_size, max_position_embeddings=cond.max_seq_len,
        encoder_layers=cond.n_layer, encoder_ffn_dim=FF_MULT * cond.n_embed,
        encoder_attention_heads=HEADS, head_dim=HEAD_DIM, d_model=cond.n_embed,
    )  # fmt: skip


def bert_params(config: LDMBertConfig) -> dict[str, int]:
    """BERTEmbedder's arguments for an LDMBert; refused where CompVis' code cannot build it."""
    fixed = {"encoder_attention_heads": HEADS, "head_dim": HEAD_DIM,
             "encoder_ffn_dim": FF_MULT * config.d_model}  # fmt: skip
    wrong = {k: getattr(config, k) for k, v in fixed.items() if getattr(config, k) != v}
    if wrong:
        raise CheckpointError(f"this LDMBert has {wrong}: CompVis' BERTEmbedder can only build "
                              f"{fixed} (x_transformers defaults): no CompVis form")  # fmt: skip
    return {"n_embed": config.d_model, "n_layer": config.encoder_layers,
            "vocab_size": config.vocab_size,
            "max_seq_len": config.max_position_embeddings}  # fmt: skip


def renames(layers: int) -> list[tuple[str, str]]:
    """(CompVis name under `transformer.`, LDMBert name) for every tensor, one table."""
    table = [("token_emb.weight", "model.embed_tokens.weight"),
             ("pos_emb.emb.weight", "model.embed_positions.weight")]  # fmt: skip
    for i in range(layers):
        attn, ff, ours = f"attn_layers.layers.{2 * i}.", f"attn_layers.layers.{2 * i + 1}.", \
            f"model.layers.{i}."  # fmt: skip
        projections = (("to_q", "q_proj"), ("to_k", "k_proj"), ("to_v", "v_proj"))
        table += [(f"{attn}1.{q}.weight", f"{ours}self_attn.{p}.weight") for q, p in projections]
        for kind in ("weight", "bias"):
            table += [
                (f"{attn}0.{kind}", f"{ours}self_attn_layer_norm.{kind}"),
                (f"{attn}1.to_out.{kind}", f"{ours}self_attn.out_proj.{kind}"),
                (f"{ff}0.{kind}", f"{ours}final_layer_norm.{kind}"),
                (f"{ff}1.net.0.0.{kind}", f"{ours}fc1.{kind}"),
                (f"{ff}1.net.2.{kind}", f"{ours}fc2.{kind}"),
            ]  # fmt: skip
    for kind in ("weight", "bias"):
        table += [(f"norm.{kind}", f"model.layer_norm.{kind}"),
                  (f"to_logits.{kind}", f"to_logits.{kind}")]  # fmt: skip
    return table


def ldm_bert_from_compvis(
    tensors: dict[str, torch.Tensor], layers: int, what: str
) -> dict[str, torch.Tensor]:
    """LDMBert's state dict from `cond_stage_model.transformer.*` tensors, strictly."""
    table = renames(layers)
    missing = [PREFIX + c for c, _ in table if c not in tensors]
    unexpected = sorted(PREFIX + k for k in set(tensors) - {c for c, _ in table})
    if missing or unexpected:
        raise CheckpointError(f"{what}: the BERTEmbedder's weights do not fit n_layer={layers}: "
                              f"missing {missing[:6]}, unexpected {unexpected[:6]}")  # fmt: skip
    return {ours: tensors[compvis] for compvis, ours in table}


def compvis_from_ldm_bert(tensors: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """`cond_stage_model.transformer.*` tensors from an LDMBert state dict."""
    return {PREFIX + compvis: tensors[ours] for compvis, ours in renames(layers)}
