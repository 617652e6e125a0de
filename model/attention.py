"""Attention in the UNet: the SpatialTransformer of Rombach et al. (2022), Sec. 3.3 (cross-attention
conditioning), and the plain self-attention block of models without text (unconditional and
concat-conditioned LDMs).

Module names mirror CompVis `ldm/modules/attention.py` and `openaimodel.py` so checkpoints load by
prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention, softmax(QK^T / sqrt(d)) V, via fused SDPA."""

    def __init__(
        self,
        query_dim: int,
        context_dim: int | None,
        heads: int,
        head_dim: int,
        upcast: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        context_dim = context_dim or query_dim
        self.heads = heads
        self.upcast = upcast  # SD 2.1 computes attention in fp32 to avoid fp16 overflow
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)  # (B, T, h*d), (B, S, h*d)
        q, k, v = (rearrange(t, "b t (h d) -> b h t d", h=self.heads) for t in (q, k, v))
        dtype = q.dtype
        if self.upcast:
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(q, k, v).to(dtype)  # (B, h, T, d)
        return self.to_out(rearrange(out, "b h t d -> b t (h d)"))


class GEGLU(nn.Module):
    """Gated GELU feed-forward input projection (Shazeer, 2020)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP with a GEGLU input layer and 4x expansion."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(
            GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention on the text context, then feed-forward; with
    `cross_only` the first attention attends to the context too (CompVis `disable_self_attn`)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        context_dim: int,
        upcast: bool = False,
        cross_only: bool = False,
    ) -> None:
        super().__init__()
        self.cross_only = cross_only
        self.attn1 = CrossAttention(
            dim, context_dim if cross_only else None, heads, head_dim, upcast
        )
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim, upcast)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), context if self.cross_only else None)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the (h w) tokens of a feature map, conditioned on context (LDM Sec. 3.3)."""

    def __init__(
        self,
        channels: int,
        heads: int,
        head_dim: int,
        depth: int,
        context_dim: int,
        use_linear: bool,
        norm_groups: int = 32,
        upcast: bool = False,
        cross_only: bool = False,
    ) -> None:
        super().__init__()
        inner = heads * head_dim
        self.use_linear = use_linear  # SD 2.x projects with Linear layers, SD 1.x with 1x1 convs
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, head_dim, context_dim, upcast, cross_only)
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        residual = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = rearrange(x, "b c h w -> b (h w) c")  # (B, h*w, C)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = rearrange(x, "b (h w) c -> b c h w", h=height, w=width)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + residual


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the (h w) pixels of a feature map, with a residual
    (CompVis `openaimodel.AttentionBlock`; diffusers' UNet2DModel attention).

    `qkv` is CompVis's fused 1x1 projection in its legacy layout: rows grouped per head, each
    head's [q; k; v] (`QKVAttentionLegacy`)."""

    def __init__(self, channels: int, heads: int, norm_groups: int = 32) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels not divisible by {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        qkv = self.qkv(self.norm(x).reshape(batch, channels, height * width))  # (B, 3C, T)
        q, k, v = rearrange(qkv, "b (h three d) t -> three b h t d", h=self.heads, three=3)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, T, d)
        out = self.proj_out(rearrange(out, "b h t d -> b (h d) t"))  # (B, C, T)
        return x + out.reshape(batch, channels, height, width)
