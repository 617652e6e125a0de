"""Tiled VAE decoding for large images: overlapping latent tiles, linearly blended seams.

Peak activation memory scales with the tile, not the image (the approach of diffusers'
`enable_tiling` and A1111's tiled VAE); the mid-block attention sees one tile at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def blend_ramp(size: int, overlap: int, start: bool, end: bool) -> torch.Tensor:
    """1-D weights: ramps up over `overlap` at a shared start edge, down at a shared end edge."""
    w = torch.ones(size)
    ramp = (torch.arange(overlap, dtype=torch.float32) + 0.5) / overlap
    if start:
        w[:overlap] = ramp
    if end:
        w[-overlap:] = ramp.flip(0)
    return w


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, length) with tiles of `tile` overlapping by `overlap`."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


@torch.inference_mode()
def decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, f: int,
                 tile: int = 64, overlap: int = 16) -> torch.Tensor:  # fmt: skip
    """decode(z) for z (B, C, h, w) via tiles of `tile` latent pixels; returns (B, 3, h*f, w*f)."""
    batch, _, height, width = z.shape
    out = torch.zeros(batch, 3, height * f, width * f, dtype=torch.float32, device=z.device)
    weight = torch.zeros(1, 1, height * f, width * f, device=z.device)
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    for y in ys:
        for x in xs:
            piece = decode(z[:, :, y : y + tile, x : x + tile]).float()  # (B, 3, th*f, tw*f)
            th, tw = piece.shape[-2:]
            wy = blend_ramp(th, overlap * f, y > 0, y != ys[-1]).to(z.device)
            wx = blend_ramp(tw, overlap * f, x > 0, x != xs[-1]).to(z.device)
            mask = wy[:, None] * wx[None, :]  # (th, tw)
            out[:, :, y * f : y * f + th, x * f : x * f + tw] += piece * mask
            weight[:, :, y * f : y * f + th, x * f : x * f + tw] += mask
    return out / weight
