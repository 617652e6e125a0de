"""Tiled VAE decode: exact when one tile covers the image, seamless blending otherwise."""

from __future__ import annotations

import torch
from torch import nn

from model.vae_tiling import blend_ramp, decode_tiled, tile_starts


def local_decoder() -> nn.Module:
    """A purely local 'decoder' (2x upsampling, two 3x3 convs): tiling error stays at seams."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Upsample(scale_factor=2.0),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(8, 3, 3, padding=1),
    ).eval()


def test_tiles_cover_the_image_with_the_requested_overlap() -> None:
    assert tile_starts(40, 64, 16) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in zip(starts, starts[1:], strict=False))
    ramp = blend_ramp(10, 4, True, True)
    assert ramp[4:6].eq(1).all() and ramp[0] < ramp[1] < ramp[2] < ramp[3] < 1
    rising, falling = blend_ramp(10, 4, True, False)[:4], blend_ramp(10, 4, False, True)[-4:]
    assert torch.allclose(rising + falling, torch.ones(4))  # overlapping weights partition 1


def test_single_tile_equals_full_decode() -> None:
    decoder, z = local_decoder(), torch.randn(2, 4, 20, 24)
    with torch.no_grad():
        assert torch.equal(decode_tiled(decoder, z, f=2, tile=32, overlap=8), decoder(z))


def test_blended_tiles_match_full_decode_away_from_borders() -> None:
    decoder, z = local_decoder(), torch.randn(1, 4, 48, 40)
    with torch.no_grad():
        full, tiled = decoder(z), decode_tiled(decoder, z, f=2, tile=16, overlap=6)
    assert tiled.shape == full.shape
    error = (tiled - full).abs()
    assert error.mean() < 0.01 * full.abs().mean()
    assert error.max() < 0.5 * full.abs().max()
