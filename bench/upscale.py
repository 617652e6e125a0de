"""Super-resolution x4: our engine vs diffusers' StableDiffusionUpscalePipeline on the same random
weights in the SD x4 upscaler layout, same process and threads; seconds per output megapixel.

    python -m bench.upscale [--threads N] [--repeats N] [--steps N] [--sizes 32,64] [--full]

Default: a mid-size model (the x4 layout at 1/4 of its widths: UNet 64-128-128-256, cross-attention
-only levels, noise-level class embedding, f=4 VAE 32-64-128). --full: the real x4 upscaler's
widths (UNet 256-512-512-1024, VAE 128-256-512, a 1024-wide text encoder), for a GPU host.
Each input size is upscaled with 25 DDIM steps and guidance 9 (diffusers' defaults are 75 and 9),
ours and diffusers interleaved with alternating order; the image difference is reported too.
diffusers is a test/bench-only oracle, never imported by the service or the workers.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.model import machine_info
from bench.timing import interleaved, med, ms

GUIDANCE, NOISE_LEVEL, PROMPT = 9.0, 20, "a photo of a lighthouse on a cliff"


def unet_config(full: bool) -> dict:
    """The x4 upscaler's UNet layout (diffusers' config of the stable-diffusion-x4-upscaler), at
    full or 1/4 width."""
    widths = (256, 512, 512, 1024) if full else (64, 128, 128, 256)
    return dict(
        block_out_channels=widths, layers_per_block=2, in_channels=7, out_channels=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        only_cross_attention=(True, True, True, False), num_class_embeds=1000,
        cross_attention_dim=1024 if full else 256, attention_head_dim=8, norm_num_groups=32,
        use_linear_projection=True, sample_size=128,
    )  # fmt: skip


def vae_config(full: bool) -> dict:
    return dict(
        block_out_channels=(128, 256, 512) if full else (32, 64, 128), latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=32, layers_per_block=2, scaling_factor=0.08333,
    )  # fmt: skip


def text_config(full: bool) -> dict:
    width = 1024 if full else 256
    return dict(hidden_size=width, intermediate_size=4 * width, num_attention_heads=8,
                num_hidden_layers=4)  # fmt: skip


def low_res(size: int) -> Image.Image:
    """A smooth image with edges: a gradient and a disc."""
    y, x = np.mgrid[0:size, 0:size] / size
    disc = ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.06)[..., None]
    rgb = np.stack([x, y, 1 - x], axis=-1) * 255
    return Image.fromarray(np.where(disc, 230, rgb).astype(np.uint8))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--sizes", default="32,64", help="input sides (output is 4x)")
    parser.add_argument("--full", action="store_true", help="the real x4 upscaler's widths")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import DDIMScheduler, StableDiffusionUpscalePipeline

    from model.engine import BatchEngine, SampleSpec
    from model.pipeline import load_pipeline
    from testkit.tiny_models import build_tiny_upscaler

    with tempfile.TemporaryDirectory() as tmp:
        configs = {"unet": unet_config(args.full), "vae": vae_config(args.full),
                   "text": text_config(args.full)}  # fmt: skip
        path = build_tiny_upscaler(Path(tmp) / "x4", **configs)
        ours = load_pipeline(path, args.device)
        theirs = StableDiffusionUpscalePipeline.from_pretrained(str(path), local_files_only=True)
    theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    theirs.to(args.device)
    unet_params = sum(p.numel() for p in ours.components.unet.parameters()) / 1e6

    def run_ours(image: Image.Image, steps: int) -> np.ndarray:
        engine = BatchEngine(ours)
        sample = engine.add(SampleSpec(
            PROMPT, seed=0, width=4 * image.width, height=4 * image.height, steps=steps,
            guidance_scale=GUIDANCE, low_res_image=image, noise_level=NOISE_LEVEL,
        ))  # fmt: skip
        while len(engine):
            engine.step()
        return np.asarray(engine.decode([sample])[0])

    def run_theirs(image: Image.Image, steps: int) -> np.ndarray:
        result = theirs(
            PROMPT, image=image, num_inference_steps=steps, guidance_scale=GUIDANCE,
            noise_level=NOISE_LEVEL, generator=torch.Generator("cpu").manual_seed(0),
            output_type="np",
        ).images[0]  # fmt: skip
        return (result * 255).round().astype(np.uint8)

    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        image = low_res(side)
        diff = np.abs(run_ours(image, args.steps).astype(int) - run_theirs(image, args.steps))
        times = interleaved(
            {"ours": lambda i=image: run_ours(i, args.steps),
             "diffusers": lambda i=image: run_theirs(i, args.steps)},
            args.repeats,
            warmups={"ours": lambda i=image: run_ours(i, 2),
                     "diffusers": lambda i=image: run_theirs(i, 2)},
        )  # fmt: skip
        megapixels = (4 * side) ** 2 / 1e6
        o, t = med(times["ours"]), med(times["diffusers"])
        rows.append((side, megapixels, o, t, diff.mean(), diff.max()))

    print("\n".join(machine_info(args.threads)))
    print(
        f"- model: x4 upscaler layout, {'full' if args.full else 'mid-size'} widths, "
        f"UNet {unet_params:.1f} M params; {args.steps} DDIM steps, guidance {GUIDANCE}, "
        f"noise level {NOISE_LEVEL}; device {args.device}; median of {args.repeats}\n"
    )
    print("| input -> output | ours | diffusers | ours s/MP | diffusers s/MP | speed-up | "
          "image diff mean / max |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for side, mp, o, t, mean, worst in rows:
        print(f"| {side}x{side} -> {4 * side}x{4 * side} | {ms(o)} | {ms(t)} | {o / mp:.1f} | "
              f"{t / mp:.1f} | {t / o:.2f}x | {mean:.3f} / {worst} |")  # fmt: skip


if __name__ == "__main__":
    main()
