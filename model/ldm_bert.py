"""The LDM-KL-8-G text encoder: a transformer trained from scratch over BERT wordpiece tokens
(Rombach et al. 2022, Sec. 4.3 and Appendix; CompVis `BERTEmbedder`), and its conditioner.

Parameter names follow diffusers' `LDMBertModel` port (`model.layers.N.self_attn.q_proj`, ...), so
`bert/` folders of `LDMTextToImagePipeline` checkpoints load by name. Pre-norm layers; attention
has `heads x head_dim` inner width (8 x 64 = 512 in the paper's 1280-wide, 32-layer model).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from transformers import BertTokenizer

log = logging.getLogger(__name__)
WINDOW = 77  # tokens per prompt: [CLS] + 75 + [SEP], padded (longer prompts are truncated)


@dataclass(frozen=True)
class LDMBertConfig:
    """The fields of diffusers' `LDMBertConfig` that shape the network."""

    vocab_size: int = 30522
    max_position_embeddings: int = 77
    encoder_layers: int = 32
    encoder_ffn_dim: int = 5120
    encoder_attention_heads: int = 8
    head_dim: int = 64
    d_model: int = 1280
    activation_function: str = "gelu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LDMBertConfig:
        if d.get("activation_function", "gelu") != "gelu":
            raise ValueError(f"LDMBert activation {d['activation_function']!r} is not supported")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class BertAttention(nn.Module):
    """Multi-head self-attention with `heads x head_dim` inner width, via fused SDPA."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.out_proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (
            rearrange(proj(x), "b t (h d) -> b h t d", h=self.heads)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, h, T, d) each
        out = F.scaled_dot_product_attention(q, k, v)  # every token, padding included
        return self.out_proj(rearrange(out, "b h t d -> b t (h d)"))


class BertLayer(nn.Module):
    """Pre-norm transformer layer: x + attn(norm(x)), then x + fc2(gelu(fc1(norm(x))))."""

    def __init__(self, c: LDMBertConfig) -> None:
        super().__init__()
        self.self_attn = BertAttention(c.d_model, c.encoder_attention_heads, c.head_dim)
        self.self_attn_layer_norm = nn.LayerNorm(c.d_model)
        self.fc1 = nn.Linear(c.d_model, c.encoder_ffn_dim)
        self.fc2 = nn.Linear(c.encoder_ffn_dim, c.d_model)
        self.final_layer_norm = nn.LayerNorm(c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class BertEncoder(nn.Module):
    """Token + learned position embeddings, the layers, a final LayerNorm."""

    def __init__(self, c: LDMBertConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.embed_positions = nn.Embedding(c.max_position_embeddings, c.d_model)
        self.layers = nn.ModuleList(BertLayer(c) for _ in range(c.encoder_layers))
        self.layer_norm = nn.LayerNorm(c.d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> hidden states (B, T, D)."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.embed_tokens(ids) + self.embed_positions(positions)[None]  # (B, T, D)
        for layer in self.layers:
            x = layer(x)
        return self.layer_norm(x)


class LDMBert(nn.Module):
    """The text encoder tau_theta of LDM-KL-8-G (`to_logits` is the pre-training head, unused)."""

    def __init__(self, config: LDMBertConfig) -> None:
        super().__init__()
        self.config = config
        self.model = BertEncoder(config)
        self.to_logits = nn.Linear(config.d_model, config.vocab_size)

    @property
    def device(self) -> torch.device:
        return self.to_logits.weight.device

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)


class BertConditioner:
    """Prompts -> LDMBert context (1, 77, D), as LDMTextToImagePipeline tokenizes them (padded to
    77, truncated beyond), with an LRU cache of embeddings."""

    def __init__(self, tokenizer: BertTokenizer, encoder: LDMBert, cache_size: int = 256) -> None:
        self.tokenizer = tokenizer
        self.encoder = encoder.eval().requires_grad_(False)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @property
    def context_dim(self) -> int:
        return self.encoder.config.d_model

    def token_count(self, prompt: str) -> int:
        """Tokens the encoder reads for a prompt ([CLS] and [SEP] included, no padding)."""
        return min(len(self.tokenizer(prompt).input_ids), WINDOW)

    @torch.no_grad()
    def encode(self, prompt: str, min_chunks: int = 1) -> torch.Tensor:
        """Context (1, 77, D) for one prompt (one window: the paper's model has no chunking)."""
        if prompt in self._cache:
            self._cache.move_to_end(prompt)
            return self._cache[prompt]
        tokens = self.tokenizer(prompt, padding="max_length", max_length=WINDOW, truncation=True,
                                return_overflowing_tokens=False).input_ids  # fmt: skip
        if len(self.tokenizer(prompt).input_ids) > WINDOW:
            log.warning("prompt longer than %d BERT tokens: truncated", WINDOW)
        context = self.encoder(torch.tensor([tokens], device=self.encoder.device))  # (1, 77, D)
        self._cache[prompt] = context
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return context

    def encode_pair(self, prompt: str, negative_prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) contexts; the paper's pipeline uses the empty prompt as uncond."""
        return self.encode(prompt), self.encode(negative_prompt)
