"""CPU knobs on our pipeline only (bench.model's last two tables): channels_last off, bf16
autocast, bf16 weights vs our fp32 default, and the UNet forward at several thread counts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import numpy as np
import torch

from bench.model_workloads import STEPS, mean_abs, ours_txt2img, ours_unet, unet_inputs
from bench.timing import interleaved, med, ms


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
