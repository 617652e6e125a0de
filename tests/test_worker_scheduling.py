"""Scheduling in a real worker: no head-of-line blocking across sizes, honest queued status.

A slow large job (FAULT_SLOW: each step of its group takes 0.1 s longer) runs when a small one of
another size arrives; the small one must not wait for the large one to finish.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from jobs.store import JobStore
from tests.conftest import RedisServer
from tests.worker_harness import WorkerProcess, done, submit, tiny_model, wait_for

__all__ = ["tiny_model"]
DB = 12


pytestmark = pytest.mark.slow  # real processes for tens of seconds: full tier only


def test_a_small_job_overtakes_a_running_large_one_of_another_size(
    redis_server: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    url = redis_server.fresh_db(DB)
    store = JobStore(redis.Redis.from_url(url), result_ttl=300, job_timeout=120)
    worker = WorkerProcess(url, tiny_model, tmp_path, {}).start()
    try:
        large = submit(store, "FAULT_SLOW large", width=64, height=64, steps=40)
        wait_for(store, large, {"running"})
        time.sleep(0.5)
        sent = time.monotonic()
        small = submit(store, "small", width=32, height=32, steps=10)
        small_record = done(store, small, timeout=30)
        small_latency = time.monotonic() - sent
        assert small_record.status.value == "succeeded"
        assert store.get(large).status.value == "running", "the large job should still run"
        assert small_latency < 1.5, small_latency  # ~4 s if it waited for the large job
        assert small_record.queue_wait_s is not None and small_record.queue_wait_s < 0.5
        assert done(store, large, timeout=60).status.value == "succeeded"
    finally:
        worker.stop()


def test_a_claimed_job_reads_queued_until_its_samples_enter_the_engine(
    redis_server: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    url = redis_server.fresh_db(DB)
    store = JobStore(redis.Redis.from_url(url), result_ttl=300, job_timeout=120)
    worker = WorkerProcess(url, tiny_model, tmp_path, {"LDM_MAX_BATCH": "1"}).start()
    try:
        first = submit(store, "FAULT_SLOW first", steps=20)
        wait_for(store, first, {"running"})
        second = submit(store, "second", steps=2)
        time.sleep(1.0)  # the worker claims it ahead (lookahead) but has no room for it
        assert store.get(first).status.value == "running"
        assert store.get(second).status.value == "queued"
        first_record = done(store, first, timeout=60)
        second_record = done(store, second, timeout=60)
        assert second_record.status.value == "succeeded"
        # its queue wait is the time until it got room: about the rest of the first job
        assert first_record.finished_at is not None and second_record.started_at is not None
        assert second_record.started_at >= first_record.finished_at - 0.5
        assert second_record.queue_wait_s is not None and second_record.queue_wait_s > 1.0
    finally:
        worker.stop()
