"""Compiled sampling: ours eager / CUDA graphs / graphs over inductor (inductor alone on the
CPU), against diffusers eager and diffusers + torch.compile, same weights, one process.

    python -m bench.gpu_compiled [--device cuda|cpu] [--out FILE] [--budget-s 420] [--repeats 3]
                                 [--smoke | --model FOLDER --size PX | --mid --size PX] [--big 16]
                                 [--sweeps] [--gaps [--gap-attention cudnn|flash|math]]

Rows, cheapest first so that a budget cut loses the costly ones: end to end txt2img (512 px,
25 DDIM steps, CFG 7.5, fp16 UNet, fp32 VAE) at 1 and 16 images for each variant, with its
warm-up (compile and capture) seconds, its images against our eager ones, and an image alone vs
in a batch of 16; with --sweeps (CUDA): graphs over eager kernels, CFG rows fused in one call
vs split in two per bucket, decode peak memory per `decode_batch`; with --gaps, the batch-16
candidates against diffusers + compile: inductor on channels_last weights (diffusers' recipe), an
SDPA backend forced for the whole compiled UNet (cuDNN's on Hopper), the decoder at one bucket,
a bf16 VAE.
Steps/s is denoising steps of the batch per second, end to end (text encoding and decode
included), as diffusers' benchmarks count it. --smoke: CPU, tiny widths.
diffusers is a bench-only oracle; this file is not imported by the service or the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from bench.diffusers_baseline import theirs_txt2img
from bench.gpu import header
from bench.gpu_models import SD15, SMOKE, build_random_sd, load_both, sync
from bench.gpu_report import Report, progress
from bench.model_workloads import mean_abs, ours_txt2img
from bench.timing import interleaved, med
from model.compiled import bucket_rows
from model.pipeline import Pipeline

GIB = 1024**3
Run = Callable[[int, int], np.ndarray]  # (images, steps) -> uint8 (n, H, W, 3)


class Session:
    """The loaded pipelines, the figures so far and the report they go to."""

    def __init__(self, report: Report, ours: Pipeline, theirs, size: int, steps: int,
                 repeats: int, device: torch.device) -> None:  # fmt: skip
        self.report, self.ours, self.theirs = report, ours, theirs
        self.size, self.steps, self.repeats, self.device = size, steps, repeats, device
        self.seconds: dict[tuple[str, int], float] = {}
        self.warm: dict[tuple[str, int], float] = {}
        self.variant_pipes: dict[str, Pipeline] = {}
        self.attention: dict[str, SDPBackend] = {}  # variants traced under one SDPA backend
        self.images: dict[tuple[str, int], np.ndarray] = {}

    def run_of(self, name: str) -> Run:
        if name.startswith("diffusers"):
            return lambda n, steps: theirs_txt2img(self.theirs, n, self.size, steps)
        pipe = self.ours if name == "ours eager" else self.variant_pipes[name]
        backend = self.attention.get(name)

        def run(n: int, steps: int) -> np.ndarray:
            # inductor picks the SDPA kernel when it traces, so compile and replay under it
            # first where it can run, the others after: the VAE's 512-wide head needs a fallback
            order = [backend, *(b for b in ATTENTION.values() if b != backend)] if backend else []
            with sdpa_kernel(order, set_priority=True) if order else contextlib.nullcontext():
                return ours_txt2img(pipe, n, self.size, steps)

        return run

    def timed(self, name: str, n: int) -> None:
        """Warm-up (the same shapes, 2 steps), then the median of `repeats` timed runs."""
        run = self.run_of(name)
        started = time.perf_counter()
        run(n, 2)
        sync(self.device)
        warm = time.perf_counter() - started
        out: dict[str, np.ndarray] = {}

        def call() -> None:
            out["images"] = run(n, self.steps)
            sync(self.device)

        seconds = med(interleaved({name: call}, self.repeats)[name])
        self.seconds[(name, n)], self.images[(name, n)] = seconds, out["images"]
        self.warm[(name, n)] = warm
        self.row(name, n)

    def row(self, name: str, n: int) -> None:
        seconds, warm = self.seconds[(name, n)], self.warm[(name, n)]
        base = self.seconds.get(("diffusers eager", n))
        compiled = self.seconds.get(("diffusers compile", n))
        ratio = f"{base / seconds:.2f}x" if base else "n/a"
        ratio_c = f"{compiled / seconds:.2f}x" if compiled else "n/a"
        eager = self.images.get(("ours eager", n))
        images = self.images[(name, n)]
        notes = []
        if eager is not None and name.startswith("ours") and name != "ours eager":
            worst = int(np.abs(images.astype(np.int16) - eager).max())
            notes.append(f"vs ours eager: mean {mean_abs(images, eager):.3f} max {worst}")
        alone = self.images.get((name, 1))
        if n > 1 and alone is not None:
            worst = int(np.abs(images[0].astype(np.int16) - alone[0]).max())
            notes.append(f"image 0 alone vs in batch: mean {mean_abs(images[:1], alone):.3f} "
                         f"max {worst}")  # fmt: skip
        self.report.row(
            name, str(n), f"{seconds:.3f}", f"{n / seconds:.2f}", f"{self.steps / seconds:.1f}",
            ratio, ratio_c, f"{warm:.1f}", "; ".join(notes),
        )  # fmt: skip

    def add_variant(self, name: str, inductor: bool, channels_last: bool = False,
                    decode_batch: int | None = None, attention: SDPBackend | None = None,
                    vae_dtype: torch.dtype | None = None) -> None:  # fmt: skip
        """Our pipeline over the same weights, compiled (`inductor`: graphs over its kernels);
        modules are shared (but for a `vae_dtype` variant's VAE), so a variant's layout holds
        until another sets its own."""
        components = self.ours.components
        if vae_dtype is not None:  # its own VAE: a bf16 round trip would round the shared weights
            components = dataclasses.replace(components, vae=copy.deepcopy(components.vae))
        pipe = Pipeline(components, self.device, self.ours.dtype)
        if vae_dtype is not None:
            pipe.components.vae.to(dtype=vae_dtype)
        pipe.decode_batch = decode_batch or pipe.decode_batch
        if attention is not None:
            self.attention[name] = attention
            torch._dynamo.reset()  # else dynamo replays the trace made under the default SDPA
        if self.device.type == "cuda":  # the CPU keeps the Pipeline's own (channels_last)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            for module in (pipe.components.unet, pipe.components.vae):
                module.to(memory_format=layout)  # in place: a later variant sets its own
        pipe.compile(inductor=inductor)
        self.variant_pipes[name] = pipe

    def compile_diffusers(self) -> None:
        """diffusers' own recipe: channels_last UNet and VAE, torch.compile reduce-overhead."""
        t = self.theirs
        t.unet.to(memory_format=torch.channels_last)
        t.vae.to(memory_format=torch.channels_last)
        mode = "reduce-overhead" if self.device.type == "cuda" else "default"  # CUDA graphs
        t.unet = torch.compile(t.unet, mode=mode, fullgraph=True)
        t.vae.decode = torch.compile(t.vae.decode, mode=mode, fullgraph=True)

    def summary(self, columns: list[str]) -> None:
        """Every row again, now that every baseline has run."""
        self.report.table("All variants (ratios against the same run's diffusers)", columns)
        for name, n in sorted(self.seconds, key=lambda key: (key[1], key[0])):
            self.row(name, n)

    def cfg_split(self, name: str, images: int) -> None:
        """One UNet call over 2n rows (cond + uncond fused) vs two calls of n rows."""
        pipe = self.variant_pipes.get(name, self.ours)
        c = pipe.components.unet.config
        latent = self.size // pipe.downsampling_factor
        ctx = pipe.conditioner.encode("")  # (1, L, D)

        def call(rows: int, calls: int) -> Callable[[], None]:
            x = torch.randn(rows, c.in_channels, latent, latent, device=self.device)
            t = torch.full((rows,), 500.0, device=self.device)
            context = ctx.expand(rows, -1, -1)

            def go() -> None:
                with torch.inference_mode():
                    for _ in range(calls):
                        pipe.network(x, t, context)
                sync(self.device)

            return go

        times = interleaved({"fused": call(2 * images, 1), "split": call(images, 2)},
                            5 * self.repeats)  # fmt: skip
        fused, split = med(times["fused"]) * 1e3, med(times["split"]) * 1e3
        self.report.row(
            f"{name}, {images} image(s)", f"{bucket_rows(2 * images)} / 2x{bucket_rows(images)}",
            f"{fused:.1f}", f"{split:.1f}", f"{split / fused:.2f}",
        )  # fmt: skip

    def decode_memory(self, batch: int, images: int = 16) -> None:
        """Peak memory and time of decoding `images` latents `batch` at a time (fp32 VAE)."""
        pipe, latent = self.ours, self.size // self.ours.downsampling_factor
        old, pipe.decode_batch = pipe.decode_batch, batch
        z = torch.randn(images, pipe.latent_channels, latent, latent, device=self.device)
        cuda = self.device.type == "cuda"
        try:
            pipe.decode_latents(z[:batch])  # warm-up
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
                start = torch.cuda.memory_allocated(self.device)
            sync(self.device)
            began = time.perf_counter()
            pipe.decode_latents(z)
            sync(self.device)
            seconds = time.perf_counter() - began
            peak = (torch.cuda.max_memory_allocated(self.device) - start) / GIB if cuda else 0.0
        finally:
            pipe.decode_batch = old
        self.report.row(str(batch), f"{peak:.2f}", f"{seconds * 1e3:.0f}",
                        f"{images / seconds:.1f}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_compiled")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--budget-s", type=float, default=420.0, help="start no row after this")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny widths, 2 steps")
    parser.add_argument("--big", type=int, default=16, help="the large batch (images)")
    parser.add_argument("--model", type=Path, default=None, help="a diffusers folder instead")
    parser.add_argument("--mid", action="store_true", help="bench.model's mid-size random model")
    parser.add_argument("--size", type=int, default=512, help="image side with --model/--mid")
    parser.add_argument(
        "--sweeps",
        action="store_true",
        help="CUDA: graphs over eager kernels, CFG fused vs split, decode memory",
    )
    parser.add_argument("--gaps", action="store_true", help="the batch-16 candidate variants")
    parser.add_argument("--gap-attention", default="cudnn", choices=sorted(ATTENTION))
    args = parser.parse_args(argv)
    spec, steps = (SMOKE, 3) if args.smoke else (SD15, 25)
    repeats = 1 if args.smoke else args.repeats
    device = torch.device("cpu" if args.smoke else args.device)
    cuda = device.type == "cuda"
    half = torch.float16 if cuda else torch.float32
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    report = Report(args.out, args.budget_s)
    report.add(*header(args.smoke, argv, device, "bench.gpu_compiled"))
    with tempfile.TemporaryDirectory(prefix="bench-compiled-") as tmp:
        name, size, path = spec.name, spec.image_size, args.model
        if args.mid:
            from bench.random_models import build_midsize_sd

            name, size, path = "mid-size SD layout (bench.model)", args.size, Path(tmp) / "mid"
            build_midsize_sd(path)
        elif path is not None:
            name, size = str(path), args.size
        else:
            path = build_random_sd(Path(tmp) / "sd", spec, device, torch.float16)
        ours, theirs, _ = load_both(path, device, half)
    report.add(f"- workload: {name}, {size}px, {steps} DDIM steps, CFG 7.5, UNet {half}, VAE "
               f"fp32 (ours); median of {repeats}")  # fmt: skip
    s = Session(report, ours, theirs, size, steps, repeats, device)
    columns = ["variant", "images", "s / batch", "img/s", "steps/s", "vs diffusers eager",
               "vs diffusers compile", "warm-up s", "images"]  # fmt: skip
    title = "End to end txt2img (x: speed-up; warm-up: first 2-step run of the batch, compile "
    report.table(title + "and capture included)", columns)
    big = args.big
    for n in (1, big):
        for variant in ("diffusers eager", "ours eager"):
            report.attempt(f"{variant} {n}", partial(s.timed, variant, n))
    if cuda and args.sweeps:
        cuda_only_rows(s, big)
    report.table("Compiled by inductor: the costly warm-ups last", columns)
    compiled = "ours graphs+inductor" if cuda else "ours compiled"
    report.attempt("diffusers compile setup", s.compile_diffusers)
    report.attempt(f"diffusers compile {big}", partial(s.timed, "diffusers compile", big))
    report.attempt("inductor setup", partial(s.add_variant, compiled, True))
    for n in (1, big):
        report.attempt(f"inductor {n}", partial(s.timed, compiled, n))
    if args.gaps:
        gap_rows(s, compiled, big, ATTENTION[args.gap_attention])
    report.attempt("diffusers compile 1", partial(s.timed, "diffusers compile", 1))
    s.summary(columns)
    progress("done")


ATTENTION = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}  # fmt: skip


def gap_rows(s: Session, compiled: str, big: int, attention: SDPBackend) -> None:
    """Batch-`big` candidates for the gap to diffusers + compile (docs/benchmarks.md): the
    decoder at one bucket (16 fp32 latents at once), a bf16 VAE (it cannot overflow as fp16
    does), SDPA forced to `attention`, inductor over channels_last weights; each compiles its own
    buckets, so only `big` runs. The first two reuse the plain variant's UNet trace, so they
    come before the SDPA variant resets dynamo's caches."""
    variants = [
        (f"{compiled}, decode_batch {big}", dict(decode_batch=big)),
        (f"{compiled}, bf16 VAE", dict(vae_dtype=torch.bfloat16)),
        (f"{compiled}, {attention.name.lower()} SDPA", dict(attention=attention)),
        (f"{compiled}, channels_last", dict(channels_last=True)),
    ]
    for name, options in variants:
        s.report.attempt(f"{name} setup", partial(s.add_variant, name, True, **options))
        s.report.attempt(f"{name} {big}", partial(s.timed, name, big))


def cuda_only_rows(s: Session, big: int) -> None:
    """CUDA graphs over eager kernels (with and without channels_last), CFG split, decode."""
    variants = [("ours graphs channels_last", False, True), ("ours graphs", False, False)]
    for name, inductor, channels_last in variants:
        s.report.attempt(f"{name} setup", partial(s.add_variant, name, inductor, channels_last))
        for n in (1, big):
            s.report.attempt(f"{name} {n}", partial(s.timed, name, n))
    cfg_columns = ["variant, images", "rows (bucket)", "fused", "split", "split / fused"]
    s.report.table("CFG rows fused vs split (UNet ms per step)", cfg_columns)
    for n in (1, 4, big):
        s.report.attempt(f"cfg {n}", partial(s.cfg_split, "ours graphs", n))
    s.report.table(f"VAE decode of {big} latents, fp32, eager",
                   ["decode_batch", "peak GiB above resident", "ms", "img/s"])  # fmt: skip
    for batch in (1, 2, 4, big):
        s.report.attempt(f"decode {batch}", partial(s.decode_memory, batch, big))


if __name__ == "__main__":
    main()
