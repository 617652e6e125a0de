"""bench.mixed_load's results: what one closed-loop window measured, and the printed tables."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from bench.closed_loop import Drive


def table(head: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table."""
    lines: list[Sequence[object]] = [head, ["---"] * len(head), *rows]
    return "\n".join("| " + " | ".join(str(cell) for cell in line) + " |" for line in lines)


def med(values: list[float], fmt: str = ".1f") -> str:
    return format(statistics.median(values), fmt) if values else "-"


@dataclass
class Window:
    """One closed-loop run: its drives by name and what happened inside the measured window."""

    t0: float
    t1: float
    drives: dict[str, Drive]
    steps: dict[tuple[str, str], int]  # (owner, size) -> sample-steps done inside the window
    metrics: dict[str, float]  # worker metric deltas and CPU seconds (cpu_worker...) over it

    def latencies(self, name: str) -> list[float]:
        """End-to-end seconds of the drive's requests that completed inside the window."""
        outs = self.drives[name].outcomes
        return [o.done - o.submitted for o in outs if o.ok and self.t0 <= o.done <= self.t1]

    def sum_steps(
        self, owner: str | None = None, size: str | None = None, eq: bool = False
    ) -> float:
        """Sample-steps of an owner and/or size (eq: weighted by pixels relative to 64x64)."""
        chosen = [
            (s, n) for (o, s), n in self.steps.items() if owner in (o, None) and size in (s, None)
        ]
        return sum(n * (math.prod(map(int, s.split("x"))) / 4096 if eq else 1) for s, n in chosen)


def cpu_line(name: str, w: Window) -> str:
    """The worker's metrics and every process's CPU (in cores) over a window."""
    m, span = w.metrics, w.t1 - w.t0
    forwards = max(1.0, m.get("ldm_worker_batch_size_count", 0))
    cores = ", ".join(f"{k[4:]} {m.get(k, 0) / span:.2f}"
                      for k in ("cpu_worker", "cpu_api", "cpu_redis", "cpu_clients"))  # fmt: skip
    steps = m.get("ldm_worker_denoising_steps_total", 0)
    batch = m.get("ldm_worker_batch_size_sum", 0)
    return (f"- {name}: worker {steps / span:.1f} sample-steps/s, {forwards / span:.1f} UNet "
            f"forwards/s, mean batch {batch / forwards:.2f}; CPU cores: {cores}")  # fmt: skip


def report_hol(res: dict[str, dict[str, list[float]]], delay: float) -> None:
    """(a): each code's 64x64 latencies alone and behind the 512x512 job, and their ratio."""
    print(f"\n### (a) head-of-line: 64x64 10 steps alone, and {delay:g} s after a 512x512 "
          "20-step job started running (polling 50 ms)\n")  # fmt: skip
    rows, ratio = [], {}
    for name, r in res.items():
        ratio[name] = statistics.median(r["behind"]) / statistics.median(r["solo"])
        each = [" ".join(f"{x:.2f}" for x in r[k]) for k in ("solo", "behind")]
        rows.append([name, each[0], med(r["solo"], ".2f"), each[1], med(r["behind"], ".2f"),
                     f"**{ratio[name]:.1f}x**", med(r["large"])])  # fmt: skip
    head = ["code", "alone (s)", "median", "behind the 512 job (s)", "median", "ratio",
            "512 job itself (s, median)"]  # fmt: skip
    print(table(head, rows))
    print(f"\ntarget ratio <= 4: {'met' if ratio['current'] <= 4 else 'NOT met'}")


def report_mixed(res: dict[str, Window]) -> None:
    """(b): images, sample-steps and 64-eq steps per second by size; current/baseline ratios."""
    rows, totals = [], {}
    for name, w in res.items():
        span = w.t1 - w.t0
        for label, size in (("512", "512x512"), ("64", "64x64"), ("all", None)):
            lat = [x for k in ("512", "64") if label in (k, "all") for x in w.latencies(k)]
            rates = (len(lat) / span, w.sum_steps(size=size) / span,
                     w.sum_steps(size=size, eq=True) / span)  # fmt: skip
            cells = [f"{rates[0]:.3f}", f"{rates[1]:.1f}", f"{rates[2]:.0f}"]
            if size is None:
                totals[name] = rates
                cells = [f"**{c}**" for c in cells]
            p95 = f"{statistics.quantiles(lat, n=20)[-1]:.1f}" if len(lat) > 1 else "-"
            rows.append([name, size or "all", len(lat), *cells, med(lat), p95])
        print(cpu_line(name, w))
    print()
    print(table(["code", "size", "images", "images/s", "sample-steps/s", "64-eq steps/s",
                 "latency p50 (s)", "p95"], rows))  # fmt: skip
    print()
    for i, label in enumerate(("images/s", "sample-steps/s", "64-eq steps/s")):
        ratio = totals["current"][i] / totals["baseline"][i] if totals["baseline"][i] else 0.0
        verdict = "met" if ratio >= 0.9 else "NOT met"
        print(f"- current/baseline {label}: {ratio:.2f} (target >= 0.90: {verdict})")


def report_fair(res: dict[str, Window], owners: dict[str, str]) -> None:
    """(c): jobs and sample-steps of each key (owner id: the sha256 of its API key) and shares."""
    rows = []
    for name, w in res.items():
        span = w.t1 - w.t0
        steps = {k: w.sum_steps(owner=owners[k]) for k in "AB"}
        share = min(steps.values()) / max(1.0, *steps.values())
        for k in "AB":
            lat = w.latencies(k)
            rows.append([name, k, len(lat), f"{len(lat) / span:.2f}", f"{steps[k]:.0f}",
                         f"{steps[k] / max(1.0, sum(steps.values())):.1%}", w.drives[k].refused,
                         med(lat), f"**{share:.2f}**" if k == "B" else ""])  # fmt: skip
    print(table(["code", "key", "jobs", "jobs/s", "sample-steps", "share", "429s",
                 "median latency (s)", "min/max"], rows))  # fmt: skip
    print("\n" + "\n".join(cpu_line(name, w) for name, w in res.items()))
