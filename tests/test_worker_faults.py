"""One real worker process, many bad jobs: each fails alone and the same process serves on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer

from jobs import keys
from jobs.store import JobStore
from tests.conftest import RedisServer
from tests.worker_harness import WorkerProcess, done, submit, tiny_model, wait_for
from workers.retire import PUBLIC_MESSAGES

__all__ = ["tiny_model"]
DB = 5  # this module's database: its worker outlives single tests, so no per-test FLUSHALL


@pytest.fixture(scope="module")
def url(redis_server: RedisServer) -> str:
    return redis_server.fresh_db(DB)


@pytest.fixture(scope="module")
def worker(
    url: str, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(
        url, tiny_model, tmp_path_factory.mktemp("faults"), {"LDM_JOB_TIMEOUT": "6"}
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture()
def store(url: str, worker: WorkerProcess) -> JobStore:
    return JobStore(redis.Redis.from_url(url), result_ttl=300, job_timeout=6)


def queue(store: JobStore) -> Queue:
    return Queue(keys.queue_name("default"), connection=store.redis, serializer=JSONSerializer)


def adds(worker: WorkerProcess, marker: str) -> int:
    path = worker.fault_dir / "adds.log"
    return sum(marker in line for line in path.read_text().splitlines()) if path.exists() else 0


def test_listens_on_exactly_one_queue(store: JobStore, worker: WorkerProcess) -> None:
    (rq_worker,) = Worker.all(connection=store.redis)
    assert rq_worker.queue_names() == ["ldm:default"]
    assert rq_worker.pid == worker.pid


def test_exception_fails_alone_and_the_worker_serves_on(
    store: JobStore, worker: WorkerProcess
) -> None:
    good = [submit(store, "a blue square", seed=s) for s in (1, 2)]
    bad = submit(store, "FAULT_RAISE please")
    later_good = submit(store, "a green circle")
    record = done(store, bad)
    assert record.status.value == "failed" and record.error and record.error.type == "error"
    assert "injected" not in record.error.message  # internals stay in the worker's log (S7)
    assert record.error.message == PUBLIC_MESSAGES["error"]
    for job_id in [*good, later_good]:
        assert done(store, job_id).status.value == "succeeded"
    assert store.get_image(bad, 0) is None
    assert Worker.all(connection=store.redis)[0].pid == worker.pid
    assert bad in queue(store).failed_job_registry.get_job_ids()
    assert set(good) <= set(queue(store).finished_job_registry.get_job_ids())
    metrics = worker.metrics()
    assert metrics['ldm_worker_job_failures_total{model="default",reason="error"}'] >= 1


def test_nan_fails_with_reason_nan(store: JobStore) -> None:
    bad = submit(store, "FAULT_NAN here")
    good = submit(store, "a yellow star")
    record = done(store, bad)
    assert record.status.value == "failed" and record.error and record.error.type == "nan"
    assert store.get_image(bad, 0) is None
    assert done(store, good).status.value == "succeeded"


def test_oom_splits_the_batch_before_failing_the_offender(
    store: JobStore, worker: WorkerProcess
) -> None:
    bad = submit(store, "FAULT_OOM big", num_images=2)
    good = submit(store, "a small dot", seed=9)
    record = done(store, bad)
    assert record.status.value == "failed" and record.error and record.error.type == "oom"
    assert done(store, good).status.value == "succeeded"
    assert adds(worker, "FAULT_OOM big") >= 3  # retried apart / with fewer samples first


def test_cancel_queued_never_runs_and_cancel_running_stops(
    store: JobStore, worker: WorkerProcess
) -> None:
    running = submit(store, "FAULT_SLOW fills the batch", num_images=8, steps=60)
    record = wait_for(store, running, {"running"})
    waiting = submit(store, "never runs")
    deadline = time.monotonic() + 10
    while (record := store.get(running)) and record.progress_step < 2:  # progress advances
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert store.request_cancel(waiting).value == "canceled"
    assert store.request_cancel(running).value == "running"  # flagged; the worker stops it
    stopped = done(store, running, timeout=10)
    assert stopped.status.value == "canceled" and stopped.progress_step < 60
    assert done(store, waiting).status.value == "canceled"
    time.sleep(0.5)
    assert adds(worker, "never runs") == 0
    q = queue(store)
    assert {running, waiting} <= set(q.canceled_job_registry.get_job_ids())
    assert q.started_job_registry.get_job_ids() == []
    assert done(store, submit(store, "after cancel")).status.value == "succeeded"


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_timeout_fails_the_job_and_the_next_succeeds(
    store: JobStore, worker: WorkerProcess
) -> None:
    started = time.monotonic()
    slow = submit(store, "FAULT_SLOW forever", steps=150)
    record = done(store, slow, timeout=30)
    assert record.status.value == "failed" and record.error and record.error.type == "timeout"
    assert time.monotonic() - started < 6 + 5
    assert done(store, submit(store, "quick one")).status.value == "succeeded"
    assert Worker.all(connection=store.redis)[0].pid == worker.pid
    metrics = worker.metrics()
    assert metrics['ldm_worker_job_failures_total{model="default",reason="timeout"}'] == 1
