"""Compiled vs eager sampling, interleaved (issue 15, CPU half): the same request alternately on
an eager and a compiled pipeline of one model, so the VM's drift hits both alike; prints a table
of medians and the ratio. `python -m bench.compiled_pair --model models/default --images 1`."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.engine import BatchEngine, SampleSpec
from model.pipeline import load_pipeline
from model.txt2img import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--images", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    eager = BatchEngine(load_pipeline(args.model))
    compiled_pipe = load_pipeline(args.model)
    compiled_pipe.compile()
    compiled = BatchEngine(compiled_pipe)
    print("| images | eager s | compiled s | compiled vs eager | max pixel diff |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in args.images:
        specs = [SampleSpec("a red circle on the left", seed=i, width=args.size,
                            height=args.size, steps=args.steps, guidance_scale=args.guidance)
                 for i in range(n)]  # fmt: skip
        images = {name: run(engine, specs) for name, engine in (("e", eager), ("c", compiled))}
        for _ in range(2):  # warm-up: compile this bucket, fill caches
            run(eager, specs), run(compiled, specs)
        times: dict[str, list[float]] = {"e": [], "c": []}
        for i in range(args.repeats):  # alternate which variant goes first
            order = (
                (("e", eager), ("c", compiled)) if i % 2 == 0 else (("c", compiled), ("e", eager))
            )
            for name, engine in order:
                started = time.perf_counter()
                run(engine, specs)
                times[name].append(time.perf_counter() - started)
        e, c = statistics.median(times["e"]), statistics.median(times["c"])
        diff = max(
            int(abs(torch.tensor(list(a.getdata())) - torch.tensor(list(b.getdata()))).max())
            for a, b in zip(images["e"], images["c"], strict=True)
        )
        print(f"| {n} | {e:.3f} | {c:.3f} | {e / c:.2f}x | {diff} |", flush=True)


if __name__ == "__main__":
    main()
