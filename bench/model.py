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
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

PROMPT = "a red cube on a blue floor, studio light"
NEGATIVE = ""
STEPS = 25
GUIDANCE = 7.5
SEED = 1234
CONTEXT_DIM = 256


# --------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------


def build_midsize_sd(path: Path, seed: int = 0) -> Path:
    """Write a random mid-size SD-layout diffusers folder (UNet ~ 1/5 of SD 1.5 widths)."""
    from tests.tiny_models import build_tiny_sd

    unet = dict(
        block_out_channels=(64, 128, 256),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=CONTEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = dict(
        block_out_channels=(32, 64, 128),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=32,
        layers_per_block=2,
    )
    text = dict(hidden_size=CONTEXT_DIM, intermediate_size=4 * CONTEXT_DIM, num_attention_heads=4,
                num_hidden_layers=4)  # fmt: skip
    return build_tiny_sd(path, seed=seed, unet=unet, vae=vae, text=text)


def param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_both(path: Path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from model.pipeline import load_pipeline

    ours = load_pipeline(path)
    theirs = StableDiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    theirs.scheduler = DDIMScheduler.from_config(theirs.scheduler.config)
    theirs.set_progress_bar_config(disable=True)
    for module in (theirs.unet, theirs.vae, theirs.text_encoder):
        module.eval().requires_grad_(False)
    return ours, theirs


# --------------------------------------------------------------------------------------------
# workloads
# --------------------------------------------------------------------------------------------


def unet_inputs(batch: int, latent: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(batch, 4, latent, latent, generator=g)
    t = torch.full((batch,), 500, dtype=torch.long)
    context = torch.randn(batch, 77, CONTEXT_DIM, generator=g)
    return x, t, context


def ours_unet(pipe, x, t, context) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.components.unet(x, t, context)


def theirs_unet(pipe, x, t, context) -> torch.Tensor:
    with torch.inference_mode():
        return pipe.unet(x, t, encoder_hidden_states=context).sample


def ours_txt2img(pipe, n: int, size: int, steps: int = STEPS) -> np.ndarray:
    images = pipe.txt2img(
        [PROMPT] * n,
        [NEGATIVE] * n,
        [SEED + i for i in range(n)],
        size,
        size,
        steps,
        GUIDANCE,
        "ddim",
    )
    return np.stack([np.asarray(image) for image in images])


def theirs_txt2img(pipe, n: int, size: int, steps: int = STEPS) -> np.ndarray:
    out = pipe(
        [PROMPT] * n,
        generator=[torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)],
        num_inference_steps=steps,
        guidance_scale=GUIDANCE,
        height=size,
        width=size,
        eta=0.0,
        output_type="np",
    ).images
    return (out * 255).round().astype(np.uint8)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------


def interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, list[float]]:
    """Warm up each (with `warmups[name]` if given, e.g. fewer steps but the same shapes), then
    `repeats` rounds rotating who goes first; returns the seconds of every timed run."""
    for name, fn in fns.items():
        (warmups or {}).get(name, fn)()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    start_all = time.perf_counter()
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    done = ", ".join(f"{name} {ms(statistics.median(ts))}" for name, ts in times.items())
    print(f"  [{time.perf_counter() - start_all:.0f} s] {done}", file=sys.stderr, flush=True)
    return times


@contextlib.contextmanager
def contiguous(pipe) -> Iterator[None]:
    """Temporarily undo the Pipeline's CPU channels_last default for UNet and VAE."""
    modules = (pipe.components.unet, pipe.components.vae)
    for module in modules:
        module.to(memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        for module in modules:
            module.to(memory_format=torch.channels_last)


def bf16_autocast() -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


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


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def med(times: list[float]) -> float:
    return statistics.median(times)


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

    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = load_both(build_midsize_sd(Path(tmp) / "midsize"))
    size = args.latent * 4  # this VAE downsamples by 4
    c = ours.components
    print(
        f"- model: UNet {param_count(c.unet) / 1e6:.1f} M params (64,128,256; attention at the "
        f"lower two levels; context {CONTEXT_DIM}), VAE {param_count(c.vae) / 1e6:.1f} M, text "
        f"encoder {param_count(c.text_encoder) / 1e6:.1f} M; latent {args.latent}x{args.latent}, "
        f"image {size}x{size}, {STEPS} DDIM steps, CFG {GUIDANCE}, fp32",
        flush=True,
    )
    rows: list[tuple[str, list[float], list[float], str]] = []

    for batch in (2,) if args.quick else (2, 16):
        x, t, ctx = unet_inputs(batch, args.latent)
        diff = (ours_unet(ours, x, t, ctx) - theirs_unet(theirs, x, t, ctx)).abs().max().item()
        times = interleaved(
            {
                "ours": lambda x=x, t=t, ctx=ctx: ours_unet(ours, x, t, ctx),
                "theirs": lambda x=x, t=t, ctx=ctx: theirs_unet(theirs, x, t, ctx),
            },
            2 * args.repeats,
        )
        rows.append((f"UNet forward, batch {batch}", times["ours"], times["theirs"], f"{diff:.0e}"))

    reference: np.ndarray | None = None
    for n in (1,) if args.quick else (1, 4):
        out: dict[str, np.ndarray] = {}
        times = interleaved(
            {
                "ours": lambda n=n, out=out: out.__setitem__("ours", ours_txt2img(ours, n, size)),
                "theirs": lambda n=n, out=out: out.__setitem__(
                    "theirs", theirs_txt2img(theirs, n, size)
                ),
            },
            args.repeats,
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
    knobs(ours, size, args.latent, args.repeats, args.quick, reference)
    threads_table(ours, args.latent, args.threads, 2 * args.repeats)
    print(f"\nwhole benchmark: {time.perf_counter() - started:.0f} s")


def knobs(ours, size: int, latent: int, repeats: int, quick: bool, reference: np.ndarray) -> None:
    """channels_last off, bf16 autocast, bf16 weights vs our default (fp32, channels_last)."""
    import copy

    from model.pipeline import Pipeline

    bf16 = Pipeline(copy.deepcopy(ours.components), dtype=torch.bfloat16)
    default = "default (fp32, channels_last)"
    variants: dict[str, tuple[object, Callable[[], contextlib.AbstractContextManager]]] = {
        default: (ours, contextlib.nullcontext),
        "channels_last off (contiguous)": (ours, lambda: contiguous(ours)),
        "bf16 autocast (fp32 weights)": (ours, bf16_autocast),
        "bf16 weights": (bf16, contextlib.nullcontext),
    }

    def unet_fn(pipe, ctxm, x, t, ctx) -> Callable[[], object]:
        def go() -> None:
            with ctxm():
                ours_unet(pipe, x.to(pipe.dtype), t, ctx.to(pipe.dtype))

        return go

    def img_fn(pipe, ctxm, steps: int, out: dict, name: str) -> Callable[[], object]:
        def go() -> None:
            with ctxm():
                out[name] = ours_txt2img(pipe, 1, size, steps)

        return go

    columns: list[tuple[str, dict[str, list[float]]]] = []
    for batch in (2,) if quick else (2, 16):
        x, t, ctx = unet_inputs(batch, latent)
        fns = {k: unet_fn(p, m, x, t, ctx) for k, (p, m) in variants.items()}
        columns.append((f"UNet fwd batch {batch}", interleaved(fns, 2 * repeats)))
    imgs: dict[str, np.ndarray] = {}
    fns = {k: img_fn(p, m, STEPS, imgs, k) for k, (p, m) in variants.items()}
    warm = {k: img_fn(p, m, 2, {}, k) for k, (p, m) in variants.items()}
    columns.append(("txt2img 1 image", interleaved(fns, repeats, warm)))

    print("\n### CPU knobs on our pipeline (median; x = time relative to our default)\n")
    head = " | ".join(f"{title} | x" for title, _ in columns)
    print(f"| knob | {head} | pixel diff vs fp32 (mean / max) |")
    print("| --- |" + " ---: | ---: |" * len(columns) + " ---: |")
    for name in variants:
        cells = " | ".join(
            f"{ms(med(times[name]))} | {med(times[name]) / med(times[default]):.2f}"
            for _, times in columns
        )
        worst = np.abs(imgs[name].astype(np.int16) - reference.astype(np.int16)).max()
        print(f"| {name} | {cells} | {mean_abs(imgs[name], reference):.2f} / {worst} |")
    print(
        "\npixel diff: mean abs difference (of 255) of the 1-image txt2img vs the fp32 default "
        "image, same seed.",
        flush=True,
    )


def threads_table(ours, latent: int, threads: int, repeats: int) -> None:
    """Our UNet forward (batch 2) at 1 thread, --threads and all cores, interleaved."""
    counts = sorted({1, threads, os.cpu_count() or 1})
    if len(counts) == 1:
        return
    x, t, ctx = unet_inputs(2, latent)

    def at(n: int) -> Callable[[], object]:
        def go() -> None:
            torch.set_num_threads(n)
            ours_unet(ours, x, t, ctx)

        return go

    times = interleaved({str(n): at(n) for n in counts}, repeats)
    torch.set_num_threads(threads)
    policy = os.environ.get("OMP_WAIT_POLICY", "unset")
    print(f"\n### torch threads (ours, UNet forward batch 2; OMP_WAIT_POLICY {policy})\n")
    print("| threads | median | best |")
    print("| ---: | ---: | ---: |")
    for n in counts:
        print(f"| {n} | {ms(med(times[str(n)]))} | {ms(min(times[str(n)]))} |")


if __name__ == "__main__":
    main()
