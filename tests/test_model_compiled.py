"""Compiled sampling (model/compiled.py): same images as eager, an image the same alone or in any
batch, a bounded set of compiled shapes, and eager wherever compiling cannot or should not run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import redis
import torch

from model.compiled import GraphedCall, bucket_rows, pad_rows, should_compile
from model.engine import BatchEngine
from model.pipeline import load_pipeline
from model.txt2img import txt2img
from testkit.tiny_models import build_tiny_sd
from tests.worker_harness import tiny_model

__all__ = ["tiny_model"]

ARGS = dict(width=32, height=32, steps=4, guidance_scale=5.0, sampler="ddim")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("compiled") / "sd")


def images(pipe, seeds: list[int]) -> np.ndarray:
    prompts = [f"prompt {seed}" for seed in seeds]
    out = txt2img(BatchEngine(pipe), prompts, [""] * len(seeds), seeds, **ARGS)
    return np.stack([np.asarray(image).astype(np.int16) for image in out])


def test_buckets_bound_the_shapes_and_never_run_one_row() -> None:
    expected = {1: 2, 2: 2, 3: 4, 5: 8, 8: 8, 9: 16, 16: 16, 17: 24, 32: 32}
    assert {n: bucket_rows(n) for n in expected} == expected
    assert all(bucket_rows(n) >= n and bucket_rows(n) - n < 8 for n in range(1, 257))
    assert len({bucket_rows(n) for n in range(1, 65)}) == 10  # 2, 4, 8, 16, ..., 64


def test_padding_repeats_the_last_row() -> None:
    x = torch.arange(6.0).reshape(3, 2)
    padded = pad_rows(x, 5)
    assert padded.shape == (5, 2)
    assert (
        torch.equal(padded[:3], x) and torch.equal(padded[3], x[2]) and torch.equal(padded[4], x[2])
    )
    assert pad_rows(x, 3) is x


def test_auto_compiles_on_cuda_only_and_off_never() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not should_compile("auto", cpu)
    assert should_compile("auto", cuda)
    assert not should_compile("off", cuda)
    assert should_compile("on", cpu) is _has_compiler()


def _has_compiler() -> bool:
    from model.compiled import c_compiler

    return c_compiler(cxx=True) is not None


def test_on_without_a_compiler_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    assert not should_compile("on", torch.device("cpu"))


@pytest.mark.slow
def test_inductor_on_cpu_matches_eager_and_keeps_batch_invariance(tiny: Path) -> None:
    if not _has_compiler():
        pytest.skip("inductor needs a C++ compiler")
    eager = load_pipeline(tiny)
    compiled = load_pipeline(tiny)
    compiled.compile()
    reference = images(eager, [3, 4, 5])  # 6 rows: bucket 8 when compiled
    got = images(compiled, [3, 4, 5])
    diff = np.abs(got - reference)
    assert diff.mean() <= 0.5 and diff.max() <= 4, (diff.mean(), diff.max())
    alone = images(compiled, [4])  # 2 rows: another bucket, another compiled graph
    assert np.abs(alone[0] - got[1]).max() <= 1  # bit-exact as measured; 1/255 allowed


@pytest.mark.gpu
def test_cuda_graphs_match_eager_and_keep_batch_invariance(tiny: Path) -> None:
    eager = load_pipeline(tiny, "cuda", torch.float16)
    graphed = load_pipeline(tiny, "cuda", torch.float16)
    graphed.compile(inductor=False)
    reference = images(eager, [3, 4, 5])
    got = images(graphed, [3, 4, 5])
    diff = np.abs(got - reference)
    assert diff.mean() <= 0.5 and diff.max() <= 4, (diff.mean(), diff.max())
    alone = images(graphed, [4])
    assert np.abs(alone[0] - got[1]).max() <= 1
    assert isinstance(graphed.unet_call, GraphedCall) and graphed.unet_call.graphs
    assert not graphed.unet_call.eager  # every shape captured, none fell back


@pytest.mark.gpu
def test_a_shape_that_cannot_be_captured_runs_eagerly() -> None:
    def sync_inside(x: torch.Tensor) -> torch.Tensor:
        return x * float(x.sum().item())  # a host sync: illegal while capturing

    call = GraphedCall(sync_inside, torch.device("cuda"))
    x = torch.ones(2, 3, device="cuda")
    assert torch.equal(call(x), x * 6.0)
    assert call.eager and not call.graphs


@pytest.mark.slow
def test_worker_compiles_every_bucket_before_it_registers(
    redis_server, tiny_model: Path, tmp_path: Path
) -> None:
    """LDM_COMPILE=on: the warm-up runs before rq lists the worker (so before /readyz counts it),
    its seconds are a metric, and the served image is the eager pipeline's. A restarted worker
    finds the kernels in LDM_COMPILE_CACHE: it warms up in under half the time and serves the
    same image."""
    import io

    from PIL import Image

    from jobs.store import JobStore
    from tests.worker_harness import WorkerProcess, done, submit

    if not _has_compiler():
        pytest.skip("inductor needs a C++ compiler")
    url = redis_server.fresh_db(13)
    env = {"LDM_COMPILE": "on", "LDM_MAX_BATCH": "1", "LDM_DEFAULT_SIZE": "32",
           "LDM_COMPILE_CACHE": str(tmp_path / "inductor")}  # fmt: skip
    store = JobStore(redis.Redis.from_url(url))
    params = dict(width=32, height=32, steps=4, guidance_scale=5.0, sampler="ddim", seed=3)
    cache = Path(env["LDM_COMPILE_CACHE"])
    warm_ups, served, kernels = [], [], []
    for run in ("cold", "restarted"):
        logs = tmp_path / run
        logs.mkdir()
        worker = WorkerProcess(url, tiny_model, logs, env).start(timeout=600)
        try:
            # set before the worker registered: the warm-up ran first
            warm_ups.append(worker.metrics()['ldm_worker_compile_seconds{model="default"}'])
            record = done(store, submit(store, "prompt 3", **params), timeout=120)
            assert record.status.value == "succeeded", record
            png = store.get_image(record.id, 0)
            served.append(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")))
        finally:
            worker.stop()
        kernels.append({p for p in cache.rglob("*") if p.is_file() and "locks" not in p.parts})
    assert warm_ups[0] > 1.0, warm_ups
    assert any("fxgraph" in p.parts for p in kernels[0])  # inductor's graphs, in LDM_COMPILE_CACHE
    assert kernels[1] == kernels[0]  # the restart compiled nothing new: every graph a cache hit
    assert warm_ups[1] < warm_ups[0] / 2, warm_ups
    assert np.array_equal(served[0], served[1])
    reference = images(load_pipeline(tiny_model), [3])[0]
    diff = np.abs(served[0].astype(np.int16) - reference)
    assert diff.mean() <= 0.5 and diff.max() <= 4, (diff.mean(), diff.max())
