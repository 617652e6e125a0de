"""Load benchmark of the whole service: N closed-loop HTTP clients against a stack it starts itself.

    python -m bench.load [--model PATH | --standin | --tiny] [--clients 16] [--seconds 30]
                         [--quick] [--threads N] [--poll 0.25|eta]
                         [--width 64 --height 64 --steps 25 --guidance 7.5 --sampler ddim]

For each configuration it starts a fresh stack on free loopback ports: redis-server (temp dir, no
persistence), `ldm-serve api` and one `ldm-serve worker` (CPU, float32). Then it warms up, runs
`--clients` threads that each loop {POST /v1/txt2img; poll GET /v1/jobs/{id} every --poll s until
terminal; GET the image} until --seconds have passed (or --requests have been served), samples the
worker's /metrics and every process's CPU time, and stops the stack. Configurations, in this order:

  (c) direct: `load_pipeline(model).txt2img(...)` in this process at batch --clients, same
      request parameters (run before and after the service runs; median of all repeats);
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
import contextlib
import datetime
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.stack import loadavg, machine_info, running_stack

REPO = Path(__file__).resolve().parents[1]
TERMINAL = {"succeeded", "failed", "canceled", "expired"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Captions in the style of the default model's shapes dataset; request i uses PROMPTS[i % len].
PROMPTS = [
    "a large red circle on the left, on a white background",
    "a small blue square at the top, on a black background",
    "a green triangle in the center, on a white background",
    "a yellow star at the bottom right, on a gray background",
    "a purple circle above an orange square, on a white background",
    "a cyan triangle on the right, on a black background",
    "two red squares, on a white background",
    "a large white circle in the center, on a blue background",
]


# --------------------------------------------------------------------------------------------
# closed-loop HTTP clients
# --------------------------------------------------------------------------------------------


@dataclass
class Params:
    """The request every client sends (prompt and seed vary per request)."""

    width: int
    height: int
    steps: int
    guidance: float
    sampler: str

    def body(self, index: int) -> dict[str, object]:
        return {"prompt": PROMPTS[index % len(PROMPTS)], "seed": 1000 + index,
                "width": self.width, "height": self.height, "steps": self.steps,
                "guidance_scale": self.guidance, "sampler": self.sampler,
                "num_images": 1, "output_format": "png"}  # fmt: skip


@dataclass
class Outcome:
    client: int
    submitted: float
    done: float
    ok: bool
    error: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # the job's server-side timings


@dataclass
class LoadResult:
    name: str
    max_batch: int
    clients: int
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    unfinished: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # worker metric deltas (window)
    window: float = float("nan")  # seconds the metric deltas cover (the steady state)

    @property
    def ok(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.ok]

    @property
    def failures(self) -> int:
        return sum(not o.ok for o in self.outcomes)

    def steady_outcomes(self) -> tuple[list[Outcome], float, int]:
        """(each client's requests after its first, summed span, cycles): a client's cycles
        are taken between its first and its last completion."""
        spans, cycles, chosen = 0.0, 0, []
        for client in range(self.clients):
            mine = sorted((o for o in self.ok if o.client == client), key=lambda o: o.done)
            if len(mine) >= 2:
                spans += mine[-1].done - mine[0].done
                cycles += len(mine) - 1
                chosen += mine[1:]
        return chosen, spans, cycles

    def steady(self) -> tuple[float, list[float], int]:
        """(throughput X = clients / mean cycle time, steady-state latencies, cycles)."""
        chosen, spans, cycles = self.steady_outcomes()
        throughput = self.clients * cycles / spans if spans > 0 else float("nan")
        return throughput, [o.done - o.submitted for o in chosen], cycles

    def breakdown(self) -> dict[str, float]:
        """Mean seconds per steady-state request: queued, sampling, decode+store, and the rest
        (HTTP, API, polling delay, image download) = end to end - the three."""
        chosen, _, _ = self.steady_outcomes()
        if not chosen:
            return {}
        out = {
            name: statistics.fmean(o.timings.get(f"{name}_s", 0.0) for o in chosen)
            for name in ("queue_wait", "sampling", "decode")
        }
        out["e2e"] = statistics.fmean(o.done - o.submitted for o in chosen)
        out["rest"] = out["e2e"] - out["queue_wait"] - out["sampling"] - out["decode"]
        return out

    def cpu_per_image(self) -> dict[str, float]:
        """CPU seconds per image of each process over the metrics window (images counted by the
        worker's images counter in the same window)."""
        images = self.metrics.get("ldm_worker_images_generated_total", 0.0)
        if images <= 0:
            return {}
        out = {name: self.metrics.get(f"cpu_{name}", 0.0) / images
               for name in ("worker", "api", "redis", "clients")}  # fmt: skip
        out["total"] = sum(out.values())
        return out

    def clients_short(self) -> int:
        """Clients with fewer than two completions (their rate is missing from X)."""
        return sum(sum(o.client == c for o in self.ok) < 2 for c in range(self.clients))


def poll_delay(poll: str, view: dict[str, object]) -> float:
    """Seconds to wait before the next GET: a fixed interval, or with `--poll eta` the job's
    remaining time extrapolated from its progress and start time (0.05..1 s; 0.25 s until the
    job has progress)."""
    if poll != "eta":
        return float(poll)
    progress = view.get("progress") or {}
    step, total = progress.get("step") or 0, progress.get("total") or 0  # type: ignore[union-attr]
    started = view.get("started_at")
    if view.get("status") != "running" or not step or not total or not started:
        return 0.25
    elapsed = time.time() - datetime.datetime.fromisoformat(str(started)).timestamp()
    remaining = elapsed * (total - step) / step
    return min(max(remaining, 0.05), 1.0)


def one_request(
    client: httpx.Client, index: int, params: Params, poll: str, deadline: float
) -> tuple[bool, str, str | None, dict[str, float]]:
    """Submit, poll until terminal, fetch image 0.

    Returns (ok, error, job id if cut off at the deadline, the job's timings)."""
    response = client.post("/v1/txt2img", json=params.body(index))
    if response.status_code != 202:
        return False, f"submit {response.status_code}", None, {}
    view = response.json()
    job_id = view["id"]
    while True:
        if time.monotonic() >= deadline:
            return False, "", job_id, {}
        time.sleep(poll_delay(poll, view))
        job = client.get(f"/v1/jobs/{job_id}")
        if job.status_code != 200:
            return False, f"poll {job.status_code}", None, {}
        view = job.json()
        if view["status"] in TERMINAL:
            break
    timings = {k: float(v) for k, v in (view.get("timings") or {}).items() if v is not None}
    if view["status"] != "succeeded":
        return False, f"job {view['status']}", None, timings
    image = client.get(f"/v1/jobs/{job_id}/images/0")
    if image.status_code != 200 or not image.content.startswith(PNG_MAGIC):
        return False, f"image {image.status_code}", None, timings
    return True, "", None, timings


Probe = Callable[[], dict[str, float]]


@dataclass
class Drive:
    """What one closed-loop run returns."""

    outcomes: list[Outcome]
    unfinished: int  # requests cut off at the deadline (canceled)
    start: float
    # (monotonic time, probe()) when every client had finished its first request, and at the end
    steady: tuple[float, dict[str, float]] | None = None
    end: tuple[float, dict[str, float]] | None = None


def drive(url: str, clients: int, params: Params, poll: str, seconds: float, requests: int,
          first_index: int = 0, probe: Probe | None = None) -> Drive:  # fmt: skip
    """Run the client threads until the time (or request) budget is spent; `probe` (the worker's
    metrics) is sampled when the steady state begins and at the deadline."""
    counter = iter(range(first_index, first_index + (requests or 10**9)))
    lock = threading.Lock()
    result = Drive([], 0, time.monotonic())
    unfinished: list[str] = []
    first_done: set[int] = set()
    deadline = result.start + seconds

    def sample() -> tuple[float, dict[str, float]] | None:
        if probe is None:
            return None
        with contextlib.suppress(httpx.HTTPError):
            return time.monotonic(), probe()
        return None

    def at_deadline() -> None:
        result.end = sample()

    def loop(client_id: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < deadline:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                submitted = time.monotonic()
                try:
                    ok, error, pending, timings = one_request(client, index, params, poll, deadline)
                except httpx.HTTPError as exc:
                    ok, error, pending, timings = False, type(exc).__name__, None, {}
                done = time.monotonic()
                with lock:
                    if pending is not None:
                        unfinished.append(pending)
                    else:
                        result.outcomes.append(
                            Outcome(client_id, submitted, done, ok, error, timings)
                        )
                    now_steady = ok and client_id not in first_done
                    if now_steady:
                        first_done.add(client_id)
                        now_steady = len(first_done) == clients
                if now_steady:
                    result.steady = sample()
                if error:
                    time.sleep(0.2)  # do not hammer a failing service

    timer = threading.Timer(seconds, at_deadline)
    timer.daemon = True
    timer.start()
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    timer.cancel()
    if result.end is None:  # --requests finished before the deadline
        result.end = sample()
    with httpx.Client(base_url=url, timeout=10) as client:  # free the worker at once
        for job_id in unfinished:
            with contextlib.suppress(httpx.HTTPError):
                client.delete(f"/v1/jobs/{job_id}")
    result.unfinished = len(unfinished)
    return result


def run_service(name: str, model: Path, max_batch: int, args: argparse.Namespace,
                params: Params, workdir: Path) -> LoadResult:  # fmt: skip
    """One configuration: fresh stack, warm-up, measured closed-loop load, worker metrics."""
    print(f"\n## {name}: LDM_MAX_BATCH={max_batch}, {args.clients} clients", flush=True)
    started = time.monotonic()
    with running_stack(model, max_batch, workdir, name, args.threads) as stack:
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


# --------------------------------------------------------------------------------------------
# the pipeline called directly
# --------------------------------------------------------------------------------------------


@dataclass
class DirectResult:
    batch: int
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # process CPU seconds per call
    flops_per_image: float = float("nan")
    unet_share: float = float("nan")
    steps: int = 0

    @property
    def throughput(self) -> float:
        return self.batch / statistics.median(self.times) if self.times else float("nan")

    def timed(self, pipe: object, params: Params) -> float:
        """One measured call; returns its wall seconds."""
        cpu = time.process_time()
        wall = direct_generate(pipe, params, self.batch)
        self.cpu.append(time.process_time() - cpu)
        self.times.append(wall)
        return wall


def build_standin(path: Path) -> Path:
    """Random weights in the default model's architecture (the `ldm-serve train` configs): the
    same FLOPs and the same timings as models/default, before that model exists."""
    import shutil as _shutil

    import torch

    from model.autoencoder import AutoencoderKL
    from model.checkpoint.diffusers_folder import save_diffusers
    from model.training.autoencoder_trainer import SHAPES_AUTOENCODER
    from model.training.ldm_trainer import SHAPES_SCHEDULE, SHAPES_UNET, text_encoder_for
    from model.training.shapes import vocabulary_corpus
    from model.training.tokenizer_builder import build_tokenizer
    from model.unet import UNet

    torch.manual_seed(0)
    tokenizer_dir = path.parent / f".{path.name}-tokenizer"
    tokenizer = build_tokenizer(vocabulary_corpus(), tokenizer_dir)
    save_diffusers(path, unet=UNet(SHAPES_UNET), vae=AutoencoderKL(SHAPES_AUTOENCODER).eval(),
                   text_encoder=text_encoder_for(tokenizer), tokenizer=tokenizer,
                   schedule=SHAPES_SCHEDULE)  # fmt: skip
    for name in ("vocab.json", "merges.txt"):
        _shutil.copy(tokenizer_dir / name, path / "tokenizer" / name)
    return path


def direct_generate(pipe: object, params: Params, batch: int) -> float:
    """One txt2img call at `batch` with the service's request parameters; returns seconds."""
    started = time.perf_counter()
    pipe.txt2img(  # type: ignore[attr-defined]
        prompts=[PROMPTS[i % len(PROMPTS)] for i in range(batch)],
        seeds=[1000 + i for i in range(batch)], width=params.width, height=params.height,
        steps=params.steps, guidance_scale=params.guidance, sampler=params.sampler,
    )  # fmt: skip
    return time.perf_counter() - started


def count_flops(pipe: object, params: Params) -> tuple[float, float]:
    """(FLOPs per image of a whole txt2img, the share spent in the UNet), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        direct_generate(pipe, params, 2)
    total = counter.get_total_flops() / 2
    per_module = counter.get_flop_counts()
    unet = [sum(ops.values()) for name, ops in per_module.items()
            if name.split(".")[-1].lower() in ("unet", "unet2dconditionmodel")]  # fmt: skip
    share = max(unet) / 2 / total if unet and total else float("nan")
    return total, share


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    """Best fp32 GEMM rate on this process's threads: a rough ceiling for dense compute."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(result: LoadResult) -> None:
    throughput, latencies, cycles = result.steady()
    m = result.metrics
    forwards = m.get("ldm_worker_batch_size_count", 0.0)
    occupancy = m.get("ldm_worker_batch_size_sum", 0.0) / forwards if forwards else float("nan")
    errors = sorted({o.error for o in result.outcomes if not o.ok})
    print(f"completed {len(result.ok)} (steady-state cycles {cycles}), failures "
          f"{result.failures} {errors or ''}, cut off at deadline {result.unfinished}; "
          f"X {throughput:.3f} img/s, img/T {len(result.ok) / result.seconds:.3f}; "
          f"p50 {pct(latencies, 50):.2f}s p95 {pct(latencies, 95):.2f}s; "
          f"mean batch {occupancy:.2f}; UNet steps/s {forwards / result.window:.2f}; "
          f"load {loadavg()}", flush=True)  # fmt: skip
    parts = result.breakdown()
    if parts:
        print("mean per request: " + ", ".join(f"{k} {v:.3f}s" for k, v in parts.items()))
    if result.clients_short():
        print(f"warning: {result.clients_short()} clients completed < 2 requests; "
              "X misses them: raise --seconds", flush=True)  # fmt: skip


def table(results: list[LoadResult], direct: DirectResult) -> str:
    head = ("| configuration | images | throughput (img/s) | img/T | p50 (s) | p95 (s) | p99 (s) "
            "| mean batch | UNet steps/s | failures |")  # fmt: skip
    lines = [head, "|" + " --- |" * 10]
    for r in results:
        x, lat, _ = r.steady()
        forwards = r.metrics.get("ldm_worker_batch_size_count", 0.0)
        occ = r.metrics.get("ldm_worker_batch_size_sum", 0.0) / forwards if forwards else 0.0
        lines.append(
            f"| service, {r.name} (LDM_MAX_BATCH={r.max_batch}, {r.clients} clients) "
            f"| {len(r.ok)} | {x:.3f} | {len(r.ok) / r.seconds:.3f} | {pct(lat, 50):.2f} "
            f"| {pct(lat, 95):.2f} | {pct(lat, 99):.2f} | {occ:.2f} "
            f"| {forwards / r.window:.2f} | {r.failures} |"
        )
    times = direct.times
    if times:
        lines.append(
            f"| direct `Pipeline.txt2img`, batch {direct.batch} (median of {len(times)}) "
            f"| {direct.batch * len(times)} | {direct.throughput:.3f} | - "
            f"| {statistics.median(times):.2f} | - | - | {direct.batch:.2f} "
            f"| {direct.steps / statistics.median(times):.2f} | 0 |"
        )
    lines += ["", "| where a request's time goes (means, s) | queued | sampling | decode + store "
              "| HTTP, polling, download | end to end |", "|" + " --- |" * 6]  # fmt: skip
    for r in results:
        b = r.breakdown()
        if b:
            lines.append(f"| {r.name} | {b['queue_wait']:.2f} | {b['sampling']:.2f} "
                         f"| {b['decode']:.2f} | {b['rest']:.2f} | {b['e2e']:.2f} |")  # fmt: skip
    lines += ["", "| CPU seconds per image (steady state) | worker | API | Redis | clients "
              "| total |", "|" + " --- |" * 6]  # fmt: skip
    for r in results:
        c = r.cpu_per_image()
        if c:
            lines.append(f"| {r.name} | {c['worker']:.3f} | {c['api']:.3f} | {c['redis']:.3f} "
                         f"| {c['clients']:.3f} | {c['total']:.3f} |")  # fmt: skip
    if direct.cpu:
        per_image = statistics.median(direct.cpu) / direct.batch
        lines.append(f"| direct | {per_image:.3f} | - | - | - | {per_image:.3f} |")
    by_name = {r.name: r.steady()[0] for r in results}
    batched, unbatched = by_name.get("batched"), by_name.get("unbatched")
    lines.append("")
    lines.append("| ratio | value | goal | met |")
    lines.append("| --- | --- | --- | --- |")
    if batched and unbatched:
        speedup = batched / unbatched
        lines.append(f"| batching speedup (batched / unbatched) | {speedup:.2f}x | >= 2x "
                     f"| {'yes' if speedup >= 2 else 'no'} |")  # fmt: skip
    if batched and times:
        overhead = 1 - batched / direct.throughput
        lines.append(f"| service overhead (1 - batched / direct) | {overhead:.1%} | <= 10% "
                     f"| {'yes' if overhead <= 0.10 else 'no'} |")  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="build a tiny random model (tests.tiny_models; needs diffusers)",
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
    parser.add_argument("--clients", type=int, default=16)
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
    parser.add_argument("--sampler", default="ddim")
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
            from tests.tiny_models import build_tiny_sd

            model = build_tiny_sd(workdir / "tiny-sd")
        elif args.standin:
            model = build_standin(workdir / "standin")
        elif not (model / "model_index.json").exists() and not model.is_file():
            print(f"no model at {model}: pass --model PATH or --tiny", file=sys.stderr)
            return 2
        print("# bench.load\n")
        print("command: python -m bench.load " + " ".join(sys.argv[1:] if argv is None else argv))
        for key, value in machine_info().items():
            print(f"- {key}: {value}")
        label = {True: "tiny random (tests.tiny_models)"}.get(args.tiny, str(model))
        if args.standin:
            label = "random weights, default model's architecture (--standin)"
        print(f"- model: {label}")
        print(f"- request: {params.width}x{params.height}, {params.steps} steps {params.sampler}, "
              f"guidance {params.guidance}, 1 image, png; poll {args.poll}")  # fmt: skip
        print(f"- per config: {args.requests or f'{args.seconds:g}s of'} requests from "
              f"{args.clients} closed-loop clients, after a warm-up", flush=True)  # fmt: skip

        pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
        direct = DirectResult(batch=args.clients, steps=params.steps)
        if "direct" in args.configs:
            print(f"\n## direct: Pipeline.txt2img at batch {args.clients}", flush=True)
            direct_generate(pipe, params, args.clients)  # warm-up
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
