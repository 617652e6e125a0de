"""bench.load's results: steady-state statistics of one service run, and the printed tables."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from bench.closed_loop import Outcome
from bench.direct_pipeline import DirectResult
from bench.stack import loadavg


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
