"""Load benchmark of the whole service: N closed-loop HTTP clients against a stack it starts itself.

    python -m bench.load [--model PATH | --standin | --tiny] [--clients 16] [--seconds 30]
                         [--quick] [--threads N] [--poll 0.25|eta]
                         [--width 64 --height 64 --steps 25 --guidance 7.5 --sampler ddim]

For each configuration it starts a fresh stack on free loopback ports: redis-server (temp dir, no
persistence), `ldm-serve api` and one `ldm-serve worker` (CPU, float32). Then it warms up, runs
`--clients` threads that each loop {POST /v1/txt2img; poll GET /v1/jobs/{id} every --poll s until
terminal; GET the image} until --seconds have passed (or --requests have been served), samples the
worker's /metrics and every process's CPU time, and stops the stack. Configurations, in this order:

  (c) direct: `txt2img(BatchEngine(load_pipeline(model)), ...)` in this process at batch
      --clients, same request parameters (run before and after the service runs; median of
      all repeats);
  (a) batched: the service with LDM_MAX_BATCH=16 (continuous batching);
  (b) unbatched: the service with LDM_MAX_BATCH=1.

Throughput is the closed-loop rate X = clients / mean cycle time, where a client's cycles are
counted between its first and its last completed request (each cycle = submit, wait, fetch), so
the start-up ramp and the requests cut off at the deadline do not bias it; `img/T` (completed
images / --seconds) is printed next to it. Latency percentiles are end to end (submit to image
bytes received) over the same steady-state requests (each client's first request is excluded).
Mean batch occupancy is sum/count of the worker's `ldm_worker_batch_size` histogram over the
steady state (from the moment every client has finished its first request to the deadline, so the
start-up ramp's small batches are left out); UNet steps/s is the rate of batched UNet forwards
(the histogram's count) over the same window. The same window gives CPU seconds per image of the
worker, API, Redis and the client threads (from /proc), next to the direct run's.

Ratios: batching speedup = X(a) / X(b) (goal >= 2x); service overhead = 1 - X(a) / X(c)
(goal <= 10%). Only loopback traffic; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.closed_loop import Params, drive
from bench.direct_pipeline import DirectResult, count_flops, direct_generate, matmul_gflops
from bench.load_report import LoadResult, summarize, table
from bench.random_models import build_standin
from bench.stack import loadavg, machine_info, running_stack
from jobs.schema import Sampler

REPO = Path(__file__).resolve().parents[1]


def run_service(name: str, model: Path, max_batch: int, args: argparse.Namespace,
                params: Params, workdir: Path) -> LoadResult:  # fmt: skip
    """One configuration: fresh stack, warm-up, measured closed-loop load, worker metrics."""
    print(f"\n## {name}: LDM_MAX_BATCH={max_batch}, {args.clients} clients", flush=True)
    started = time.monotonic()
    env = {"LDM_DEVICE": args.device, "LDM_DTYPE": args.dtype, "LDM_COMPILE": args.compile,
           "LDM_DEFAULT_SIZE": str(args.width)}  # warm-up at the request's size  # fmt: skip
    with running_stack(model, max_batch, workdir, name, args.threads, env=env) as stack:
        print(f"stack ready in {time.monotonic() - started:.1f}s; warming up", flush=True)
        warm = min(args.clients, max_batch)
        warmup = drive(stack.url, warm, params, args.poll, 300, warm, first_index=10**6)
        if not all(o.ok for o in warmup.outcomes):
            raise RuntimeError(f"warm-up failed: {warmup.outcomes}\n{stack.log('worker')}")
        before = (time.monotonic(), stack.probe())
        seconds = args.max_seconds if args.requests else args.seconds
        result = LoadResult(name, max_batch, args.clients, seconds)
        run = drive(stack.url, args.clients, params, args.poll, seconds, args.requests,
                    probe=stack.probe)  # fmt: skip
        result.outcomes, result.unfinished = run.outcomes, run.unfinished
        result.seconds = min(seconds, time.monotonic() - run.start)
        # Worker metrics over the steady state: from every client's first completion to the end.
        first = run.steady or before
        last = run.end or (time.monotonic(), stack.probe())
        result.window = last[0] - first[0]
        result.metrics = {k: v - first[1].get(k, 0.0) for k, v in last[1].items()}
    summarize(result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="build a tiny random model (testkit.tiny_models; needs diffusers)",
    )
    parser.add_argument(
        "--standin",
        action="store_true",
        help="build random weights in the default model's architecture (same timings)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the worker and the direct run (default: torch's)",
    )
    parser.add_argument(
        "--sd15",
        action="store_true",
        help="build random SD 1.5-size weights (bench.gpu_models; needs diffusers; use a GPU)",
    )
    parser.add_argument("--device", default="cpu", help="worker and direct run: cpu, cuda")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    parser.add_argument(
        "--compile",
        default="off",
        choices=("off", "on", "auto"),
        help="LDM_COMPILE of the worker, and the direct run compiled alike",
    )
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--direct-batch", type=int, default=0, help="batch of the direct run (default: --clients)"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="measured load per config")
    parser.add_argument(
        "--requests",
        type=int,
        default=0,
        help="serve this many requests per config instead of --seconds",
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="cap for --requests")
    parser.add_argument("--max-batch", type=int, default=16, help="LDM_MAX_BATCH of config (a)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--sampler", choices=[s.value for s in Sampler], default=Sampler.ddim.value)
    parser.add_argument(
        "--poll",
        default="0.25",
        help="client poll interval in s (0.25: cli.client's default), or 'eta': sleep until the "
        "job's remaining time estimated from its progress",
    )
    parser.add_argument(
        "--direct-repeats",
        type=int,
        default=3,
        help="timed direct runs before and after the service runs (each)",
    )
    parser.add_argument(
        "--configs",
        default="direct,batched,unbatched",
        help="comma-separated subset of direct,batched,unbatched",
    )
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="debug run: 10 s per config, 1 direct repeat each side, no FLOPs",
    )
    args = parser.parse_args(argv)
    if args.poll != "eta":
        try:
            if not 0.01 <= float(args.poll) <= 10:
                raise ValueError
        except ValueError:
            parser.error("--poll: seconds in [0.01, 10] or 'eta'")
    args.configs = {c.strip() for c in args.configs.split(",") if c.strip()}
    if not args.configs <= {"direct", "batched", "unbatched"}:
        parser.error(f"unknown --configs {sorted(args.configs)}")
    if args.quick:
        args.seconds = min(args.seconds, 10.0)
        args.direct_repeats = 1
        args.no_flops = True
    bounds = (args.clients, args.seconds, args.direct_repeats)
    if not (1 <= args.clients <= 256 and 0 < args.seconds <= 1800 and args.direct_repeats >= 1):
        parser.error(f"out of bounds: clients/seconds/direct repeats {bounds}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from model.pipeline import load_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)

    params = Params(args.width, args.height, args.steps, args.guidance, args.sampler)
    with tempfile.TemporaryDirectory(prefix="ldm-bench-load-") as tmp:
        workdir = Path(tmp)
        model = args.model
        if args.tiny:
            from testkit.tiny_models import build_tiny_sd

            model = build_tiny_sd(workdir / "tiny-sd")
        elif args.standin:
            model = build_standin(workdir / "standin")
        elif args.sd15:
            from bench.gpu_models import SD15, build_random_sd

            model = build_random_sd(workdir / "sd15", SD15, args.device, torch.float16)
        elif not (model / "model_index.json").exists() and not model.is_file():
            print(f"no model at {model}: pass --model PATH or --tiny", file=sys.stderr)
            return 2
        print("# bench.load\n")
        print("command: python -m bench.load " + " ".join(sys.argv[1:] if argv is None else argv))
        for key, value in machine_info().items():
            print(f"- {key}: {value}")
        label = {True: "tiny random (testkit.tiny_models)"}.get(args.tiny, str(model))
        if args.standin:
            label = "random weights, default model's architecture (--standin)"
        print(f"- model: {label}")
        print(f"- request: {params.width}x{params.height}, {params.steps} steps {params.sampler}, "
              f"guidance {params.guidance}, 1 image, png; poll {args.poll}")  # fmt: skip
        print(f"- per config: {args.requests or f'{args.seconds:g}s of'} requests from "
              f"{args.clients} closed-loop clients, after a warm-up", flush=True)  # fmt: skip

        from model.compiled import should_compile
        from model.devices import DTYPES

        pipe = load_pipeline(model, device=args.device, dtype=DTYPES[args.dtype])
        if should_compile(args.compile, pipe.device):
            pipe.compile()
        direct = DirectResult(batch=args.direct_batch or args.clients, steps=params.steps)
        if "direct" in args.configs:
            print(f"\n## direct: Pipeline.txt2img at batch {direct.batch}", flush=True)
            direct_generate(pipe, params, direct.batch)  # warm-up
            for _ in range(args.direct_repeats):
                direct.timed(pipe, params)
            print("before: " + ", ".join(f"{t:.2f}s" for t in direct.times), flush=True)

        results = [
            run_service(name, model, max_batch, args, params, workdir)
            for name, max_batch in (("batched", args.max_batch), ("unbatched", 1))
            if name in args.configs
        ]

        if "direct" in args.configs:
            after = [direct.timed(pipe, params) for _ in range(args.direct_repeats)]
            print("\n## direct again\nafter: " + ", ".join(f"{t:.2f}s" for t in after)
                  + f"; {direct.throughput:.3f} img/s (median)", flush=True)  # fmt: skip
        if "direct" in args.configs and not args.no_flops:
            direct.flops_per_image, direct.unet_share = count_flops(pipe, params)
            peak = matmul_gflops()
            achieved = direct.flops_per_image * direct.throughput / 1e9
            print(f"FLOPs: {direct.flops_per_image / 1e9:.3f} GFLOP per image "
                  f"(UNet share {direct.unet_share:.0%}); direct achieves {achieved:.1f} "
                  f"GFLOP/s vs {peak:.1f} GFLOP/s best fp32 1024^2 matmul here "
                  f"({achieved / peak:.0%})", flush=True)  # fmt: skip

    print("\n## results\n")
    print(table(results, direct))
    print(f"\nload average at the end: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
