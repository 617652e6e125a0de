"""VQ-regularized autoencoder, quantizer absorbed into the decoder (Rombach et al., Sec. 3.1).

Diffusion runs on the continuous pre-quantization latents; decoding snaps them to the codebook.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from model.autoencoder import AutoencoderConfig, Decoder, Encoder


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup (van den Oord et al., 2017)."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        _, _, height, width = z.shape
        flat = rearrange(z, "b c h w -> (b h w) c")  # (N, C)
        codes = torch.cdist(flat, self.embedding.weight.to(flat.dtype)).argmin(dim=1)  # (N,)
        quantized = self.embedding(codes).to(z.dtype)  # (N, C)
        return rearrange(quantized, "(b h w) c -> b c h w", h=height, w=width)


class VQAutoencoder(nn.Module):
    """Encoder -> latents; quantize -> decoder ("VQ-reg." variant of the paper)."""

    def __init__(self, config: AutoencoderConfig, num_embeddings: int) -> None:
        super().__init__()
        self.config = config
        z = config.latent_channels
        self.encoder = Encoder(config, z)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(z, z, 1)
        self.quantize = VectorQuantizer(num_embeddings, z)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(self.quantize(z)))
