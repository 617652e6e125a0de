"""VQ-regularized autoencoder, quantizer absorbed into the decoder (Rombach et al., Sec. 3.1).

Diffusion runs on the continuous pre-quantization latents; decoding snaps them to the codebook
(as diffusers' `VQModel.decode` does by default, and both of its LDM pipelines).
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from model.autoencoder import AutoencoderConfig, Decoder, Encoder

# Latent pixels per distance matrix: bounds the (rows, codes) matrix to ~128 MB at 8192 codes.
CHUNK_ROWS = 4096


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook lookup (van den Oord et al., 2017)."""

    def __init__(self, num_embeddings: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, dim)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index (B, h, w) of each latent pixel's nearest code (Euclidean) in z (B, C, h, w)."""
        batch, _, height, width = z.shape
        codebook = self.embedding.weight.to(z.dtype)  # (K, C)
        codes = []
        # Image by image, in fixed chunks: a pixel's code never depends on what shares its batch.
        for image in z:
            flat = rearrange(image, "c h w -> (h w) c")  # (h*w, C)
            parts = flat.split(CHUNK_ROWS)
            codes += [torch.cdist(part, codebook).argmin(dim=1) for part in parts]  # (n,) each
        return torch.cat(codes).view(batch, height, width)  # (B, h, w)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Each latent pixel of z (B, C, h, w) replaced by its nearest code (Euclidean)."""
        _, _, height, width = z.shape
        quantized = self.embedding(self.codes(z).flatten()).to(z.dtype)  # (B*h*w, C)
        return rearrange(quantized, "(b h w) c -> b c h w", h=height, w=width)


class VQAutoencoder(nn.Module):
    """Encoder -> latents; quantize -> decoder ("VQ-reg." variant of the paper; diffusers'
    VQModel with vq_embed_dim = latent_channels)."""

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
