"""Soak test: one API and one worker under a mixed load for a long time; does memory keep growing?

    python -m bench.soak [--minutes 30] [--interval 10] [--csv rss.csv] [--threads 1]

Starts a private stack (bench/stack.py: redis-server, `ldm-serve api`, one `ldm-serve worker`, the
shipped model on the CPU) and runs closed-loop clients of several sizes and samplers (LOADS) for
--minutes, writing the RSS (VmRSS from /proc/<pid>/status) of the API, worker and Redis processes
every --interval s to a CSV. At the end: per process the RSS when the warm-up ends (after 5
minutes, or 1/6 of a shorter run), the final and the maximum RSS, growth after the warm-up (final
vs warm-up end; and medians of the first vs the last minutes after it, which the < 5 % target
is judged on) and the least-squares slope after the warm-up; the jobs completed and failed; and
whether every job the API accepted ended terminal (succeeded, failed, canceled, expired) once the
clients stopped (requests still running at the deadline are canceled). Exit status 0 when all hold.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from bench.closed_loop import TERMINAL, Drive, Params, drive
from bench.mixed_report import table
from bench.stack import REPO, Stack, loadavg, machine_info
from jobs.schema import Sampler

# (name, clients, request): large and small jobs, several samplers, sharing the engine
LOADS = [
    ("512x512 ddim 20", 1, Params(512, 512, 20, 3.0, Sampler.ddim)),
    ("256x256 euler_a 15", 1, Params(256, 256, 15, 3.0, Sampler.euler_a)),
    ("64x64 dpmpp_2m 25", 2, Params(64, 64, 25, 3.0, Sampler.dpmpp_2m)),
    ("64x64 heun 10", 1, Params(64, 64, 10, 3.0, Sampler.heun)),
    ("96x64 ddim 10, no CFG", 1, Params(96, 64, 10, 1.0, Sampler.ddim)),
]
PROCESSES = ("api", "worker", "redis")


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (VmRSS in /proc/<pid>/status); None once gone."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


def sample_rss(stack: Stack, path: Path, seconds: float, interval: float,
               stop: threading.Event) -> list[dict[str, float]]:  # fmt: skip
    """RSS of each process every `interval` s until `seconds` pass or `stop` is set; each row is
    also appended to the CSV at once (a crash leaves the samples so far)."""
    rows: list[dict[str, float]] = []
    start = time.monotonic()
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["elapsed_s", *(f"{p}_rss_kib" for p in PROCESSES)])
        while True:
            elapsed = time.monotonic() - start
            row = {"t": elapsed, **{p: float(rss_kib(stack.pid(p)) or 0) for p in PROCESSES}}
            rows.append(row)
            writer.writerow([f"{elapsed:.1f}", *(int(row[p]) for p in PROCESSES)])
            handle.flush()
            if elapsed >= seconds or stop.wait(min(interval, seconds - elapsed)):
                return rows


def slope_per_hour(rows: list[dict[str, float]], key: str) -> float:
    """Least-squares slope of RSS over time (KiB per hour)."""
    if len(rows) < 2:
        return float("nan")
    ts = [r["t"] for r in rows]
    return statistics.linear_regression(ts, [r[key] for r in rows]).slope * 3600


def report(rows: list[dict[str, float]], warmup: float) -> bool:
    """The RSS table; True when the API and the worker grew < 5% after the warm-up, judged on
    medians of the samples in the first and the last `span` after it (one sample swings with
    what the worker is decoding right then: +-10% on a 512x512 image)."""
    warm = min(rows, key=lambda r: abs(r["t"] - warmup))
    after = [r for r in rows if r["t"] >= warm["t"]]
    span = max(30.0, min(120.0, (rows[-1]["t"] - warm["t"]) / 5))
    first = [r for r in after if r["t"] <= warm["t"] + span]
    last = [r for r in after if r["t"] >= rows[-1]["t"] - span]
    lines, ok = [], True
    for p in PROCESSES:
        growth = (rows[-1][p] - warm[p]) / warm[p]
        smooth = statistics.median(r[p] for r in last) / statistics.median(r[p] for r in first) - 1
        ok &= p == "redis" or smooth < 0.05  # Redis holds the run's job records by design
        lines.append([p, f"{warm[p] / 1024:.1f}", f"{rows[-1][p] / 1024:.1f}",
                      f"{max(r[p] for r in after) / 1024:.1f}", f"{growth:+.1%}",
                      f"**{smooth:+.1%}**", f"{slope_per_hour(after, p) / 1024:+.1f}"])  # fmt: skip
    head = [f"RSS, MiB (warm-up ends at {warm['t']:.0f} s)", "warm-up end", "final",
            "max after warm-up", "growth (final / warm-up end)",
            f"growth (medians, first vs last {span:.0f} s)", "slope (MiB/h)"]  # fmt: skip
    print(table(head, lines))
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--csv", type=Path, default=None, help="default: soak-rss-<time>.csv")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="LDM_TORCH_THREADS (0: torch's)")
    parser.add_argument("--poll", default="0.25", help="client poll interval (s)")
    args = parser.parse_args(argv)
    seconds = args.minutes * 60
    warmup = min(300.0, seconds / 6)
    path = args.csv or Path(f"soak-rss-{time.strftime('%Y%m%d-%H%M%S')}.csv")
    print("# bench.soak\n")
    print("command: python -m bench.soak " + " ".join(sys.argv[1:] if argv is None else argv))
    for key, value in machine_info().items():
        print(f"- {key}: {value}")
    load = ", ".join(f"{name} x{clients}" for name, clients, _ in LOADS)
    print(f"- load: {load} (closed loop, poll {args.poll} s); worker LDM_MAX_BATCH="
          f"{args.max_batch}, threads {args.threads}")  # fmt: skip
    print(f"- RSS samples every {args.interval:g} s to {path}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ldm-bench-soak-") as tmp:
        ttl = {"LDM_RESULT_TTL": str(int(max(3600, seconds + 900)))}  # keep every record
        stack = Stack(args.model.resolve(), args.max_batch, Path(tmp), "soak", args.threads or None,
                      env=ttl)  # fmt: skip
        try:
            stack.start()
            drives: dict[str, Drive] = {}

            def run(i: int, name: str, clients: int, params: Params) -> None:
                drives[name] = drive(stack.url, clients, params, args.poll, seconds, 0,
                                     first_index=i * 10**6)  # fmt: skip

            threads = [threading.Thread(target=run, args=(i, *load), daemon=True)
                       for i, load in enumerate(LOADS)]  # fmt: skip
            for thread in threads:
                thread.start()
            rows = sample_rss(stack, path, seconds, args.interval, threading.Event())
            for thread in threads:
                thread.join(timeout=300)
            settle_error = ""
            try:
                stack.settle(timeout=180)
            except RuntimeError as exc:
                settle_error = str(exc)
            jobs = stack.jobs()
        finally:
            stack.stop()
    print(f"\n## after {seconds / 60:g} min (load average {loadavg()})\n")
    memory_ok = report(rows, warmup)
    outcomes = [o for d in drives.values() for o in d.outcomes]
    errors = Counter(o.error for o in outcomes if not o.ok)
    statuses = Counter(job[0] for job in jobs.values())
    stuck = [job_id for job_id, job in jobs.items() if job[0] not in TERMINAL]
    refused = sum(o.error.startswith("submit") for o in outcomes)
    accepted = len(outcomes) - refused + sum(d.unfinished for d in drives.values())
    print()
    print(table(["load", "completed", "failed", "cut at the deadline", "median latency (s)"],
                [[name, sum(o.ok for o in d.outcomes), sum(not o.ok for o in d.outcomes),
                  d.unfinished, f"{statistics.median(lat):.2f}" if lat else "-"]
                 for name, d in drives.items()
                 for lat in [[o.done - o.submitted for o in d.outcomes if o.ok]]]))  # fmt: skip
    print(f"\n- client-side failures: {dict(errors) or 'none'}")
    print(f"- accepted jobs: {accepted} by the clients' count, {len(jobs)} records in Redis; "
          f"by status: {dict(statuses)}")  # fmt: skip
    print(f"- not terminal after the run: {len(stuck)} {stuck[:5]} {settle_error}".rstrip())
    print(f"- RSS growth < 5% after warm-up (API, worker): {'met' if memory_ok else 'NOT met'}")
    return 0 if memory_ok and not stuck and not errors and accepted == len(jobs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
