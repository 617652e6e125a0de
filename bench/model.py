"""Ours vs diffusers on the same random mid-size SD-layout weights, same process, same threads.

    python -m bench.model [--threads N] [--repeats N] [--quick] [--latent L]

Measures (median of --repeats timed runs after one warm-up, ours and diffusers interleaved with
alternating order): (1) UNet forward at batch 2 (one CFG image) and batch 16; (2) full 25-step DDIM
txt2img with CFG, 1 and 4 images. Then CPU knobs on our pipeline only: channels_last off (the
default Pipeline puts UNet/VAE in channels_last on CPU), bf16 autocast, bf16 weights; the image
difference of each knob vs the fp32 default is the mean abs pixel difference (of 255).

diffusers is a test/bench-only oracle; this file is not imported by the service or the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.cpu_knobs import knobs, threads_table
from bench.diffusers_baseline import load_diffusers, theirs_txt2img, theirs_unet
from bench.model_workloads import (
    GUIDANCE,
    STEPS,
    mean_abs,
    ours_txt2img,
    ours_unet,
    param_count,
    unet_inputs,
)
from bench.random_models import CONTEXT_DIM, build_midsize_sd
from bench.timing import interleaved, med, ms


def machine_info(threads: int) -> list[str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                flags = " ".join(
                    sorted(have & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
                )
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- CPU: {cpu} ({flags}); logical cores: {os.cpu_count()}; torch threads: {threads}",
        f"- torch {torch.__version__}, python {platform.python_version()}, "
        f"load average at start: {load}",
    ]


def ours_vs_diffusers(
    ours, theirs, size: int, latent: int, repeats: int, quick: bool
) -> np.ndarray:
    """Time the UNet forward and txt2img rows on both pipelines, interleaved, and print the
    comparison table; returns our 1-image txt2img output (the knobs' reference image)."""
    rows: list[tuple[str, list[float], list[float], str]] = []

    for batch in (2,) if quick else (2, 16):
        x, t, ctx = unet_inputs(batch, latent)
        diff = (ours_unet(ours, x, t, ctx) - theirs_unet(theirs, x, t, ctx)).abs().max().item()
        times = interleaved(
            {
                "ours": lambda x=x, t=t, ctx=ctx: ours_unet(ours, x, t, ctx),
                "theirs": lambda x=x, t=t, ctx=ctx: theirs_unet(theirs, x, t, ctx),
            },
            2 * repeats,
        )
        rows.append((f"UNet forward, batch {batch}", times["ours"], times["theirs"], f"{diff:.0e}"))

    reference: np.ndarray | None = None
    for n in (1,) if quick else (1, 4):
        out: dict[str, np.ndarray] = {}
        times = interleaved(
            {
                "ours": lambda n=n, out=out: out.__setitem__("ours", ours_txt2img(ours, n, size)),
                "theirs": lambda n=n, out=out: out.__setitem__(
                    "theirs", theirs_txt2img(theirs, n, size)
                ),
            },
            repeats,
            warmups={
                "ours": lambda n=n: ours_txt2img(ours, n, size, steps=2),
                "theirs": lambda n=n: theirs_txt2img(theirs, n, size, steps=2),
            },
        )
        reference = out["ours"] if reference is None else reference
        label = f"txt2img {STEPS} steps, {n} image{'s' if n > 1 else ''}"
        diff = f"{mean_abs(out['ours'], out['theirs']):.2f}"
        rows.append((label, times["ours"], times["theirs"], diff))

    print("\n### Ours vs diffusers (same weights, same process; median)\n")
    print("| workload | ours | diffusers | ours/diffusers | (best-run ratio) | output diff |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for label, a, b, diff in rows:
        print(
            f"| {label} | {ms(med(a))} | {ms(med(b))} | **{med(a) / med(b):.2f}** | "
            f"{min(a) / min(b):.2f} | {diff} |"
        )
    print(
        "\nratio < 1: ours is faster. output diff: UNet = max abs difference of the noise "
        "prediction; txt2img = mean abs pixel difference (of 255).",
        flush=True,
    )
    assert reference is not None
    return reference


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.model",
        description="ldm-serve vs diffusers on the same random mid-size SD weights (CPU).",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed runs per txt2img row (median); UNet-forward rows run twice as many",
    )
    parser.add_argument("--latent", type=int, default=24, help="latent side (image side = 4x)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 repeat, 16x16 latents, fewer rows"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.latent = 1, 16
    torch.set_num_threads(args.threads)
    import diffusers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    started = time.perf_counter()
    for line in machine_info(args.threads):
        print(line)
    print(f"- diffusers {diffusers.__version__} (oracle); repeats {args.repeats} (median)")

    from model.pipeline import load_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        path = build_midsize_sd(Path(tmp) / "midsize")
        ours, theirs = load_pipeline(path), load_diffusers(path)
    size = args.latent * 4  # this VAE downsamples by 4
    c = ours.components
    print(
        f"- model: UNet {param_count(c.unet) / 1e6:.1f} M params (64,128,256; attention at the "
        f"lower two levels; context {CONTEXT_DIM}), VAE {param_count(c.vae) / 1e6:.1f} M, text "
        f"encoder {param_count(c.text_encoder) / 1e6:.1f} M; latent {args.latent}x{args.latent}, "
        f"image {size}x{size}, {STEPS} DDIM steps, CFG {GUIDANCE}, fp32",
        flush=True,
    )
    reference = ours_vs_diffusers(ours, theirs, size, args.latent, args.repeats, args.quick)
    knobs(ours, size, args.latent, args.repeats, args.quick, reference)
    threads_table(ours, args.latent, args.threads, 2 * args.repeats)
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
