"""Interleaved wall-clock timing for bench.model, and how its tables print durations."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable


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


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def med(times: list[float]) -> float:
    return statistics.median(times)
