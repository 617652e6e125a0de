"""The denoising UNet eps_theta(z_t, t, tau(y)) of Rombach et al. (2022), Sec. 3.3.

Attribute names mirror the CompVis `openaimodel.py` checkpoint keys (`time_embed`, `input_blocks`,
`middle_block`, `output_blocks`, `out`), so an original single-file checkpoint loads by prefix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import AttentionBlock, SpatialTransformer


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the UNet; `num_heads` is per resolution level. With `context_dim`
    None the model reads no text: its attention is self-attention only (the paper's unconditional
    and concat-conditioned models; diffusers' UNet2DModel)."""

    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    num_heads: tuple[int, ...] = (8, 8, 8, 8)
    context_dim: int | None = 768
    transformer_depth: int = 1
    use_linear_projection: bool = False
    norm_groups: int = 32
    upcast_attention: bool = False
    # Per level: attention attends to the context only, no self-attention (the SD x4 upscaler;
    # CompVis `disable_self_attentions`, diffusers `only_cross_attention`). Empty: none.
    cross_attention_only: tuple[bool, ...] = ()
    # Class-conditional embedding added to the timestep embedding (the x4 upscaler's noise level).
    num_classes: int | None = None
    # Latent side it was trained at (diffusers' sample_size, CompVis' image_size); None: unknown.
    sample_size: int | None = field(default=None, compare=False)

    def heads_and_dim(self, level: int) -> tuple[int, int]:
        """Number of heads and head size of the attention at one resolution level."""
        channels = self.model_channels * self.channel_mult[level]
        heads = self.num_heads[level]
        if channels % heads:
            raise ValueError(f"{channels} channels at level {level} not divisible by {heads} heads")
        return heads, channels // heads


SD15_UNET = UNetConfig()
# SD 2.x: OpenCLIP ViT-H context (1024), 64-channel heads, linear projections.
SD2_UNET = UNetConfig(
    context_dim=1024, num_heads=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True
)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (possibly fractional) timesteps (Vaswani et al., 2017)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)  # on t's device: no copy
    freqs = torch.exp(-math.log(max_period) * steps / half)  # inside a captured CUDA graph
    # Row by row: vectorised cos/sin round differently in a vector body and its scalar tail, so a
    # whole-batch call would make a row's embedding depend on its position in the batch.
    if t.device.type != "cpu":
        args = t.float()[:, None] * freqs[None]  # (B, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, dim)
    rows = [torch.cat([torch.cos(ti * freqs), torch.sin(ti * freqs)]) for ti in t.float()]
    return torch.stack(rows)  # (B, dim)


class RowwiseLinear(nn.Linear):
    """nn.Linear whose rows never depend on the batch size (CPU GEMM picks M-dependent kernels).

    Used on the (B, emb) timestep path so an image is bit-identical alone or batched; each
    distinct row is computed once, so the cost stays small next to the convolutions.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":  # bit-identity is promised on CPU; GPUs take the batched GEMM
            return super().forward(x)
        if torch.compiler.is_compiling():  # one GEMM: rows unrolled were 14k addmm calls per
            return super().forward(x)  # 16-image batch; compiled images are within 1/255 instead
        if torch.is_grad_enabled():  # training: unique() has no derivative
            return torch.cat([F.linear(row[None], self.weight, self.bias) for row in x])
        # Rows repeat (a CFG pair, samples at the same step share t): each distinct row once.
        distinct, inverse = torch.unique(x, dim=0, return_inverse=True)  # (U, in), (B,)
        rows = [F.linear(row[None], self.weight, self.bias) for row in distinct]  # U x (1, out)
        return torch.cat(rows)[inverse]  # (B, out)


class ResBlock(nn.Module):
    """Residual block with the timestep embedding added between its two convolutions."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), RowwiseLinear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection: nn.Module = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb)[:, :, None, None].to(h.dtype)  # (B, C, 1, 1) broadcast
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """A sequence of layers, each given only the inputs it understands."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """eps/v-prediction UNet with cross-attention on a text context, or self-attention only."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = c = config
        mc, groups = c.model_channels, c.norm_groups
        emb_dim = 4 * mc
        self.time_embed = nn.Sequential(
            RowwiseLinear(mc, emb_dim), nn.SiLU(), RowwiseLinear(emb_dim, emb_dim)
        )

        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, emb_dim)

        def attention(channels: int, level: int, middle: bool = False) -> nn.Module:
            heads, head_dim = c.heads_and_dim(level)
            if c.context_dim is None:
                return AttentionBlock(channels, heads, groups)
            cross_only = not middle and level < len(c.cross_attention_only)
            cross_only = cross_only and c.cross_attention_only[level]
            return SpatialTransformer(
                channels,
                heads,
                head_dim,
                c.transformer_depth,
                c.context_dim,
                c.use_linear_projection,
                groups,
                c.upcast_attention,
                cross_only,
            )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(c.in_channels, mc, 3, padding=1))]
        )
        skip_channels, ch = [mc], mc
        last = len(c.channel_mult) - 1
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mc * mult, groups)]
                ch = mc * mult
                if c.attention_levels[level]:
                    layers.append(attention(ch, level))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != last:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, ch, groups),
            attention(ch, last, middle=True),
            ResBlock(ch, emb_dim, ch, groups),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, groups)]
                ch = mc * mult
                if c.attention_levels[level]:
                    layers.append(attention(ch, level))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(mc, c.out_channels, 3, padding=1)
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        context: torch.Tensor | None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict eps (or v) for latents x (B, C, h, w) at t (B,) given context (B, S, D) (read
        only by models with a `context_dim`) and, for class-conditional models, labels (B,)."""
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(x.dtype))
        if self.config.num_classes is not None:
            if labels is None:
                raise ValueError("this UNet is class-conditional: it needs labels")
            emb = emb + self.label_emb(labels.to(emb.device)).to(emb.dtype)  # (B, emb)
        context = None if self.config.context_dim is None else context.to(x.dtype)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context)  # (B, C + C_skip, h, w)
        return self.out(h)
