"""Perceptual compression: the KL-regularized autoencoder of Rombach et al. (2022), Sec. 3.1.

Attribute names mirror CompVis `ldm/modules/diffusionmodules/model.py` (`encoder.down.N.block.M`,
`mid.attn_1`, `quant_conv`, ...), so original checkpoints load by prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from model.unet import Upsample  # the same nearest-2x + 3x3 conv (`upsample.conv`)


@dataclass(frozen=True)
class AutoencoderConfig:
    """Hyper-parameters of the autoencoder; downsampling factor f = 2 ** (len(channel_mult) - 1)."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    latent_channels: int = 4
    norm_groups: int = 32
    scaling_factor: float = 0.18215  # SD-1/2 VAE latent scale: unit variance latents for diffusion

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


SD_VAE = AutoencoderConfig()


class ResnetBlock(nn.Module):
    """Pre-activation residual block without timestep input."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv2d(in_channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels of a feature map."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        q, k, v = (rearrange(f(h), "b c h w -> b 1 (h w) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, h*w, C)
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Asymmetric pad then stride-2 3x3 convolution (as in the CompVis autoencoder)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Level(nn.Module):
    """One resolution level: residual blocks and an optional resampler (`down.N` / `up.N`)."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()  # SD autoencoders have no attention outside the middle
        if resample is not None:
            setattr(self, name, resample)
        self.resample_name = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return getattr(self, self.resample_name)(x) if self.resample_name else x


class Middle(nn.Module):
    """Residual block, self-attention, residual block at the lowest resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """x (B, 3, H, W) -> moments (B, 2*z, H/f, W/f)."""

    def __init__(self, c: AutoencoderConfig, out_channels: int) -> None:
        super().__init__()
        g, chans = c.norm_groups, [c.base_channels * m for m in c.channel_mult]
        self.conv_in = nn.Conv2d(c.in_channels, c.base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        ch = c.base_channels
        for level, out in enumerate(chans):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(ch, out, g))
                ch = out
            resample = Downsample(ch) if level != len(chans) - 1 else None
            self.down.append(Level(blocks, resample, "downsample"))
        self.mid = Middle(ch, g)
        self.norm_out = nn.GroupNorm(g, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """z (B, z, h, w) -> x (B, 3, h*f, w*f); `up` is indexed by level, run from the last."""

    def __init__(self, c: AutoencoderConfig) -> None:
        super().__init__()
        g, chans = c.norm_groups, [c.base_channels * m for m in c.channel_mult]
        ch = chans[-1]
        self.conv_in = nn.Conv2d(c.latent_channels, ch, 3, padding=1)
        self.mid = Middle(ch, g)
        levels: list[Level] = []
        for level in reversed(range(len(chans))):
            blocks = []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResnetBlock(ch, chans[level], g))
                ch = chans[level]
            levels.insert(0, Level(blocks, Upsample(ch) if level else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = nn.GroupNorm(g, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, c.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """The posterior q(z|x) = N(mean, diag(exp(logvar)))."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, z, h, w) each
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std * N(0, I), drawn where `generator` lives (as diffusers' randn_tensor)."""
        device = generator.device if generator is not None else self.mean.device
        shape, dtype = self.mean.shape, self.mean.dtype
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> torch.Tensor:
        return self.mean

    def __getitem__(self, rows: slice) -> DiagonalGaussian:
        """The posterior of some rows of the batch."""
        return DiagonalGaussian(torch.cat([self.mean[rows], self.logvar[rows]], dim=1))

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent dimensions."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class AutoencoderKL(nn.Module):
    """Encoder, Gaussian posterior, decoder; diffusion runs on z * scaling_factor."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        z = config.latent_channels
        self.encoder = Encoder(config, 2 * z)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))
