"""Worker process lifecycle: SIGTERM (drain or hand back), kill -9 recovery, hung-worker watchdog.

Liveness is sped up (heartbeat TTL 3 s, maintenance every 1 s), so the promised recovery bound
`heartbeat_ttl + maintenance_interval + restart` is a few seconds here (120 s + restart by default).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from rq import Queue, Worker
from rq.job import Job
from rq.serializers import JSONSerializer

from jobs import keys
from jobs.store import JobStore
from tests.worker_harness import WorkerProcess, done, submit, tiny_model, wait_for
from workers.metrics import WorkerMetrics
from workers.process import abandoned_hook
from workers.rq_bridge import RqBridge

__all__ = ["tiny_model"]


pytestmark = pytest.mark.slow  # real processes for tens of seconds: full tier only


@pytest.fixture()
def spawn(redis_url: str, tiny_model: Path, tmp_path: Path) -> Iterator[object]:
    started: list[WorkerProcess] = []

    def start(**env: str) -> WorkerProcess:
        worker = WorkerProcess(redis_url, tiny_model, tmp_path, env)
        started.append(worker.start())
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture()
def store(redis_url: str) -> JobStore:
    return JobStore(redis.Redis.from_url(redis_url), result_ttl=300, job_timeout=600)


def rq_status(store: JobStore, job_id: str) -> str:
    return Job.fetch(job_id, connection=store.redis, serializer=JSONSerializer).get_status().value


def running_with_progress(store: JobStore, job_id: str, step: int = 1) -> None:
    wait_for(store, job_id, {"running"}, timeout=30)
    deadline = time.monotonic() + 20
    while (record := store.get(job_id)) and record.progress_step < step:
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.05)


def test_handback_then_kill9_recovery_then_graceful_drain(store: JobStore, spawn) -> None:  # type: ignore[no-untyped-def]
    queue = Queue(keys.queue_name("default"), connection=store.redis, serializer=JSONSerializer)
    # 1. SIGTERM with no grace: the running job goes back to the front of the queue.
    impatient = spawn(LDM_SHUTDOWN_GRACE="0")
    handed = submit(store, "FAULT_SLOW handed back", steps=30)
    running_with_progress(store, handed)
    impatient.signal(signal.SIGTERM)
    assert impatient.wait(15) == 0
    assert store.get(handed).status.value == "queued"
    assert rq_status(store, handed) == "queued" and queue.get_job_ids() == [handed]
    assert queue.started_job_registry.get_job_ids() == []
    assert not any(w.pid == impatient.pid for w in Worker.all(connection=store.redis))

    # 2. The next worker finishes it; then it is killed -9 in the middle of a two-job batch.
    doomed = spawn()
    assert done(store, handed, timeout=30).status.value == "succeeded"
    batch = [submit(store, f"FAULT_SLOW batch {i}", steps=25, seed=i) for i in range(2)]
    for job_id in batch:
        running_with_progress(store, job_id, step=2)
    doomed.signal(signal.SIGKILL)
    doomed.wait(10)
    killed_at = time.monotonic()

    # 3. A restarted worker requeues them (heartbeat TTL + maintenance) and finishes them.
    survivor = spawn()
    for job_id in batch:
        wait_for(store, job_id, {"queued", "running", "succeeded"}, timeout=30)
    for job_id in batch:
        record = done(store, job_id, timeout=60)
        assert record.status.value == "succeeded" and record.attempts == 2
        assert rq_status(store, job_id) == "finished"
    recovered_s = time.monotonic() - killed_at
    assert recovered_s < 45, f"recovery took {recovered_s:.1f}s"
    assert (store.get(batch[0]).started_at or 0) > 0

    # 4. SIGTERM with grace: the running job finishes, then the worker exits 0.
    last = submit(store, "FAULT_SLOW drained", steps=15)
    running_with_progress(store, last)
    survivor.signal(signal.SIGTERM)
    assert survivor.wait(30) == 0
    assert store.get(last).status.value == "succeeded"
    assert queue.started_job_registry.get_job_ids() == []
    assert store.redis.llen(queue.intermediate_queue_key) == 0


def test_hung_worker_exits_and_its_job_is_retried_once_then_abandoned(
    store: JobStore,
    spawn,  # type: ignore[no-untyped-def]
) -> None:
    hung = submit(store, "FAULT_HANG forever")
    first = spawn(LDM_WATCHDOG_SECONDS="2")
    wait_for(store, hung, {"running"}, timeout=30)
    assert first.wait(20) == 70  # watchdog: busy without step progress
    second = spawn(LDM_WATCHDOG_SECONDS="2")  # its startup maintenance requeues the job once
    assert second.wait(30) == 70
    assert store.get(hung).attempts == 2
    # Whoever runs maintenance next (here: a janitor bridge) fails it as abandoned.
    janitor = RqBridge(store.redis, keys.queue_name("default"), heartbeat_ttl=3)
    janitor.on_abandoned = abandoned_hook(store, WorkerMetrics("default", CollectorRegistry()))
    deadline = time.monotonic() + 15
    while (record := store.get(hung)) and record.status.value != "failed":
        assert time.monotonic() < deadline
        janitor.worker.last_cleaned_at = None
        janitor.maintain()
        time.sleep(0.5)
    assert record and record.error and record.error.type == "abandoned"
    assert rq_status(store, hung) == "failed"
