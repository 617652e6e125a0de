"""The pipeline called directly in the benchmark process: bench.load's in-process baseline (c).

Timed `Pipeline.txt2img` calls at batch --clients with the service's request parameters, the
FLOPs of one image by torch's counter, and a matmul ceiling to compare them with.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from bench.closed_loop import PROMPTS, Params


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


def direct_generate(pipe: object, params: Params, batch: int) -> float:
    """One txt2img call at `batch` with the service's request parameters; returns seconds."""
    from model.engine import BatchEngine
    from model.txt2img import txt2img

    started = time.perf_counter()
    txt2img(
        BatchEngine(pipe),  # type: ignore[arg-type]
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
