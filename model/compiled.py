"""Compiled network calls: inductor kernels on the CPU, one CUDA graph per shape on the GPU.

The pipeline pads every UNet and VAE batch up to a bucket (`bucket_rows`) so only a bounded set
of shapes is ever compiled or captured; padded rows repeat the last real row and are dropped.
CUDA graphs (PyTorch's `torch.cuda.graph`) replay a whole forward as one launch, which is what a
diffusion UNet at small batch is short of; inductor (`torch.compile`) fuses the per-operator
overhead away on the CPU, and can feed the graphs its own kernels on CUDA.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch

log = logging.getLogger(__name__)

CompileMode = Literal["auto", "off", "on"]
TensorFn = Callable[..., torch.Tensor]


def bucket_rows(rows: int) -> int:
    """The batch a call of `rows` rows runs at: 2, 4, 8, then the next multiple of 8.

    Never 1: CPU conv kernels differ at batch 1 only, so a lone row runs duplicated and an image
    is the same alone or batched.
    """
    if rows <= 8:
        return max(2, 1 << (rows - 1).bit_length())
    return -(-rows // 8) * 8


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """(B, ...) -> (rows, ...), the last row repeated (rows >= B)."""
    extra = rows - len(tensor)
    if extra == 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(extra, *tensor.shape[1:])])


def should_compile(mode: CompileMode, device: torch.device) -> bool:
    """`auto` compiles where it wins without an hour-long warm-up: on CUDA (graphs over inductor
    kernels: 1.4-1.6x end to end, ~40 s to compile a bucket on 16 cores, cached across restarts);
    on the CPU inductor wins 1.3-1.6x but compiles ~70 s a bucket on 2 cores, so only when asked
    (`on`). Inductor needs a C++ compiler on the CPU (docs/benchmarks.md)."""
    if mode == "off":
        return False
    if device.type == "cpu" and not c_compiler(cxx=True):
        if mode == "on":
            log.warning("compile=on but no C++ compiler (g++/clang++) on PATH: running eagerly")
        return False
    return mode == "on" or device.type == "cuda"


def c_compiler(cxx: bool = False) -> str | None:
    """The compiler inductor would use: C++ for its CPU kernels, C for Triton's launcher."""
    names = ("CXX", "g++", "c++", "clang++") if cxx else ("CC", "cc", "gcc", "clang")
    for name in (os.environ.get(names[0]), *names[1:]):
        if name and shutil.which(name):
            return name
    return None


def persist_cache(directory: Path | None) -> None:
    """Keep inductor's compiled graphs (and autotune results) under `directory`, Triton's GPU
    kernels in its `triton/`, so a restarted worker loads them instead of compiling again.

    An explicit TORCHINDUCTOR_CACHE_DIR (TRITON_CACHE_DIR) wins. Importing torch._dynamo sets
    TORCHINDUCTOR_CACHE_DIR to torch's default, /tmp/torchinductor_<user>: that value is torch's,
    not the user's, and is replaced (inductor reads the variable on every cache access).
    """
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if directory is None:
        return
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    os.environ.setdefault("TRITON_CACHE_DIR", str(directory / "triton"))


def compile_call(fn: TensorFn, device: torch.device, inductor: bool = True) -> TensorFn:
    """`fn` compiled for `device`: inductor on the CPU; CUDA graphs on CUDA (over inductor's
    kernels when `inductor` and a C compiler for Triton is there, else over fn's eager kernels)."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), 64))  # one entry per bucket and size
    if device.type == "cuda":
        if inductor and not c_compiler():
            log.warning("no C compiler for Triton: CUDA graphs over eager kernels")
            inductor = False
        return GraphedCall(torch.compile(fn, dynamic=False) if inductor else fn, device)
    return torch.compile(fn, dynamic=False)


class GraphedCall:
    """fn over tensors, captured once per input signature as a CUDA graph and replayed.

    Inputs are copied into the graph's static buffers; the output is cloned out before the next
    replay can overwrite it. All graphs share one memory pool (calls never overlap). A shape that
    fails to capture runs eagerly from then on, with one warning.
    """

    def __init__(self, fn: TensorFn, device: torch.device) -> None:
        self.fn, self.device = fn, device
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        self.eager: set[tuple] = set()

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        key = tuple((tuple(a.shape), a.dtype) for a in args)
        if key in self.eager:
            return self.fn(*args)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(args)
            except Exception as error:  # a capture-unsafe op: keep serving, slower
                log.warning("CUDA graph capture failed for %s (%s): running eagerly", key, error)
                self.eager.add(key)
                return self.fn(*args)
        graph, inputs, output = self.graphs[key]
        for static, arg in zip(inputs, args, strict=True):
            static.copy_(arg)
        graph.replay()
        return output.clone()

    def _capture(self, args: tuple[torch.Tensor, ...]):
        inputs = [a.to(self.device).clone() for a in args]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up off the capture: library handles, inductor
            for _ in range(2):
                self.fn(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = self.fn(*inputs)
        return graph, inputs, output
