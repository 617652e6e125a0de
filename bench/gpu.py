"""Ours vs diffusers on a GPU: the same random SD 1.5-size weights, same process, interleaved.

    python -m bench.gpu [--device cuda] [--repeats 3] [--out FILE] [--budget-s 110] [--smoke]

Rows (median of timed runs after a warm-up, ours and diffusers alternating who goes first, CUDA
synchronised before every clock read): load; UNet forward at batch 2 and 8 on 64x64 latents;
25-step DDIM txt2img with CFG 7.5 at 512x512, 1 and 4 images; weights and peak memory of the
4-image run. Then image differences: ours vs diffusers, fp16/bf16 vs fp32, NaN/black counts.
The table file is rewritten after every row, so a timeout keeps what finished; rows that start
after --budget-s are skipped. --smoke: CPU, tiny widths, 32x32 latents, 2 steps, 1 repeat.

diffusers is a bench-only oracle; this file is not imported by the service or the workers.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.diffusers_baseline import theirs_txt2img, theirs_unet
from bench.gpu_models import SD15, SMOKE, ModelSpec, build_random_sd, load_both, sync
from bench.gpu_report import Report, progress
from bench.model_workloads import GUIDANCE, STEPS, mean_abs, ours_txt2img, ours_unet, param_count
from bench.timing import interleaved, med
from model.pipeline import NonFiniteOutput, Pipeline

DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
IMAGES = 4  # the larger txt2img row; its images are also the correctness sample
GIB = 1024**3
COMPARISONS = [("ours fp16", "diffusers fp16"), ("ours fp32", "diffusers fp32")]
COMPARISONS += [("ours fp16", "ours fp32"), ("ours bf16", "ours fp32")]
COMPARISONS += [("diffusers fp16", "diffusers fp32")]  # diffusers' own precision loss


def synced(device: torch.device, fn: Callable[..., object], *args: object) -> Callable[[], None]:
    """`fn(*args)`, then wait for the device: timings read the clock after the work is done."""

    def call() -> None:
        fn(*args)
        sync(device)

    return call


def weight_bytes(modules: list[torch.nn.Module]) -> int:
    tensors = [t for m in modules for t in (*m.parameters(), *m.buffers())]
    return sum(t.numel() * t.element_size() for t in tensors)


def checked(fn: Callable[[], np.ndarray]) -> np.ndarray | None:
    """The uint8 images of `fn`, or None when they were non-finite (ours raises; the uint8 cast
    of NaN in diffusers' output is an 'invalid value', which errstate turns into an error)."""
    try:
        with np.errstate(invalid="raise"):
            return fn()
    except (NonFiniteOutput, FloatingPointError) as error:
        progress(f"non-finite output: {error}")
        return None


def bad_images(images: np.ndarray | None) -> str:
    if images is None:
        return "NaN"
    return f"{sum(int(image.max()) <= 2 for image in images)}/{len(images)} black"


@dataclass
class Bench:
    """Both pipelines on one device, the workload, and the report the rows go to."""

    report: Report
    ours: Pipeline
    theirs: Any  # diffusers' StableDiffusionPipeline
    spec: ModelSpec
    device: torch.device
    steps: int
    repeats: int
    peaks: dict[str, int] = field(default_factory=dict)  # peak bytes above the start of a call
    outputs: dict[str, np.ndarray | None] = field(default_factory=dict)

    def unet_row(self, batch: int, dtype: torch.dtype, repeats: int) -> None:
        """UNet forward at `batch` (CFG rows count) on the same inputs; diff is max abs."""
        g, latent = torch.Generator("cpu").manual_seed(0), self.spec.latent
        x = torch.randn(batch, 4, latent, latent, generator=g).to(self.device, dtype)
        context = torch.randn(batch, 77, self.spec.unet["cross_attention_dim"], generator=g)
        context = context.to(self.device, dtype)
        t = torch.full((batch,), 500, dtype=torch.long, device=self.device)
        ours, theirs = ours_unet(self.ours, x, t, context), theirs_unet(self.theirs, x, t, context)
        diff = (ours.float() - theirs.float()).abs().max().item()
        ours_fn = synced(self.device, ours_unet, self.ours, x, t, context)
        theirs_fn = synced(self.device, theirs_unet, self.theirs, x, t, context)
        times = interleaved({"ours": ours_fn, "theirs": theirs_fn}, repeats)
        label = f"UNet forward, batch {batch}, {latent}x{latent} latent, {DTYPE_NAMES[dtype]}"
        a, b = med(times["ours"]) * 1e3, med(times["theirs"]) * 1e3
        self.report.pair(label, a, b, "{:.1f} ms", f"max abs output diff {diff:.1e}")

    def txt2img_row(self, n: int) -> dict[str, np.ndarray | None]:
        """Timed txt2img of `n` images on both; records each side's peak CUDA memory."""
        size, steps, cuda = self.spec.image_size, self.steps, self.device.type == "cuda"
        out: dict[str, np.ndarray | None] = {}

        def timed(name: str, fn: Callable[[], np.ndarray]) -> Callable[[], None]:
            def call() -> None:
                if cuda:  # host-side allocator counters: no sync, no effect on the timing
                    torch.cuda.reset_peak_memory_stats(self.device)
                    start = torch.cuda.memory_allocated(self.device)
                out[name] = checked(fn)
                sync(self.device)
                if cuda:
                    peak = torch.cuda.max_memory_allocated(self.device) - start
                    self.peaks[name] = max(self.peaks.get(name, 0), peak)

            return call

        times = interleaved(
            {
                "ours": timed("ours", lambda: ours_txt2img(self.ours, n, size, steps)),
                "theirs": timed("theirs", lambda: theirs_txt2img(self.theirs, n, size, steps)),
            },
            self.repeats,
            warmups={  # same shapes, 2 steps
                "ours": lambda: ours_txt2img(self.ours, n, size, 2),
                "theirs": lambda: theirs_txt2img(self.theirs, n, size, 2),
            },
        )
        a, b = med(times["ours"]), med(times["theirs"])
        note = f"{n / a:.2f} vs {n / b:.2f} img/s"
        if out["ours"] is not None and out["theirs"] is not None:
            note += f"; mean abs pixel diff {mean_abs(out['ours'], out['theirs']):.2f}"
        label = f"txt2img {steps} steps, {n} image{'s' * (n > 1)}, {size}x{size}"
        self.report.pair(label, a, b, "{:.2f} s", note)
        return out

    def memory_rows(self) -> None:
        """Weights of each pipeline, and its peak above them during the 4-image txt2img."""
        c = self.ours.components
        w_ours = weight_bytes([c.unet, c.vae, c.text_encoder])
        w_theirs = weight_bytes([self.theirs.unet, self.theirs.vae, self.theirs.text_encoder])
        note = "ours keeps the VAE in fp32 under fp16"
        self.report.pair("weights (GiB)", w_ours / GIB, w_theirs / GIB, "{:.2f}", note)
        label = f"peak above resident, {IMAGES}-image txt2img (GiB)"
        if not {"ours", "theirs"} <= self.peaks.keys():
            self.report.row(label, "n/a (no CUDA memory stats)")
            return
        p_ours, p_theirs = self.peaks["ours"] / GIB, self.peaks["theirs"] / GIB
        note = "max_memory_allocated - allocated before the call"
        self.report.pair(label, p_ours, p_theirs, "{:.2f}", note)
        total_ours, total_theirs = w_ours / GIB + p_ours, w_theirs / GIB + p_theirs
        self.report.pair("weights + that peak (GiB)", total_ours, total_theirs, "{:.2f}")

    def precision_images(self, dtype: torch.dtype, sides: tuple[str, ...]) -> None:
        """The 4-image txt2img of each side after converting it in place to `dtype` (the saved
        fp16 weights convert exactly, so this equals loading the folder in `dtype`)."""
        ours = Pipeline(self.ours.components, self.device, dtype)
        theirs = self.theirs.to(device=self.device, dtype=dtype, silence_dtype_warnings=True)
        size, steps = self.spec.image_size, self.steps
        runs = {
            "ours": lambda: ours_txt2img(ours, IMAGES, size, steps),
            "diffusers": lambda: theirs_txt2img(theirs, IMAGES, size, steps),
        }
        for side in sides:
            self.outputs[f"{side} {DTYPE_NAMES[dtype]}"] = checked(runs[side])

    def compare_row(self, a: str, b: str) -> None:
        x, y = self.outputs.get(a, "missing"), self.outputs.get(b, "missing")
        flags = ", ".join(
            f"{k}: {v if isinstance(v, str) else bad_images(v)}" for k, v in ((a, x), (b, y))
        )
        if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
            worst = np.abs(x.astype(np.int16) - y.astype(np.int16)).max()
            self.report.row(f"{a} vs {b}", f"{mean_abs(x, y):.2f}", str(worst), flags)
        else:
            self.report.row(f"{a} vs {b}", "n/a", "n/a", flags)


def header(smoke: bool, argv: list[str], device: torch.device, prog: str = "bench.gpu"
           ) -> list[str]:  # fmt: skip
    import diffusers
    import transformers

    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, "
        name += f"cuDNN {torch.backends.cudnn.version()}"
    else:
        name = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    return [
        f"## ldm-serve vs diffusers on {device.type}{' (smoke run)' * smoke}\n",
        f"- date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- device: {name}",
        f"- python {platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}; TF32 matmul/cuDNN "
        f"{torch.backends.cuda.matmul.allow_tf32}/{torch.backends.cudnn.allow_tf32}, "
        f"cudnn.benchmark {torch.backends.cudnn.benchmark}",
        f"- command: `{' '.join([f'python -m {prog}', *argv])}`",
    ]


def load_row(report: Report, path: Path, device: torch.device, dtype: torch.dtype) -> tuple:
    """Load both pipelines, timed; report load seconds and parameter counts."""
    ours, theirs, seconds = load_both(path, device, dtype)
    note = f"{DTYPE_NAMES[dtype]} safetensors, page cache warm"
    report.pair("load folder to device", seconds[0], seconds[1], "{:.1f} s", note)
    c = ours.components
    ours_m = [param_count(m) / 1e6 for m in (c.unet, c.vae, c.text_encoder)]
    theirs_m = sum(param_count(m) for m in (theirs.unet, theirs.vae, theirs.text_encoder)) / 1e6
    note = "UNet {:.1f} M, VAE {:.1f} M, text encoder {:.1f} M".format(*ours_m)
    report.pair("parameters (M)", sum(ours_m), theirs_m, "{:.1f}", note)
    return ours, theirs


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed txt2img runs per row (median); the UNet rows run 5x as many",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--budget-s", type=float, default=110.0, help="start no row after this (s)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny widths, 2 steps, 1 repeat")
    args = parser.parse_args(argv)
    spec, steps = (SMOKE, 2) if args.smoke else (SD15, STEPS)
    repeats, unet_repeats = (1, 1) if args.smoke else (args.repeats, 5 * args.repeats)
    device, half = torch.device("cpu" if args.smoke else args.device), torch.float16
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()  # e.g. a warning per .to(fp16) about fp32 modules
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    report = Report(args.out, args.budget_s)
    report.add(*header(args.smoke, argv, device))
    report.add(
        f"- workload: {spec.name}, latent {spec.latent}x{spec.latent}, image "
        f"{spec.image_size}x{spec.image_size}, {steps} DDIM steps, CFG {GUIDANCE}, "
        f"{DTYPE_NAMES[half]} unless stated; median of {repeats} (UNet: {unet_repeats})"
    )
    report.table(
        "Speed and memory (ratio < 1: ours is faster / smaller)",
        ["workload", "ours", "diffusers", "ours/diffusers", "notes"],
    )
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        progress(f"building random weights ({spec.name}) on {device} ...")
        started = time.perf_counter()
        path = build_random_sd(Path(tmp) / "sd", spec, device, half)
        progress(f"built and saved in {time.perf_counter() - started:.1f} s")
        if device.type == "cuda":
            torch.cuda.empty_cache()
        loaded = report.attempt("load", lambda: load_row(report, path, device, half))
    if loaded is None:
        return
    bench = Bench(report, loaded[0], loaded[1], spec, device, steps, repeats)
    for batch in (2, 8):
        report.attempt(
            f"UNet forward, batch {batch}", partial(bench.unet_row, batch, half, unet_repeats)
        )
    for n in (1, IMAGES):
        out = report.attempt(f"txt2img, {n} image(s)", partial(bench.txt2img_row, n))
    if out is not None:
        bench.outputs.update({"ours fp16": out["ours"], "diffusers fp16": out["theirs"]})
    report.attempt("memory", bench.memory_rows)
    report.table(
        f"Image differences, {IMAGES} images, same seeds and prompt (abs pixel difference, of 255)",
        ["comparison", "mean", "max", "NaN / black images"],
    )
    report.attempt(
        "fp32 images", lambda: bench.precision_images(torch.float32, ("ours", "diffusers"))
    )
    report.attempt("bf16 images", lambda: bench.precision_images(torch.bfloat16, ("ours",)))
    for a, b in COMPARISONS:
        bench.compare_row(a, b)
    progress(f"done{f'; tables in {args.out}' if args.out else ''}")


if __name__ == "__main__":
    main()
