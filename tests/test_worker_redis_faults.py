"""Faults reaching the worker through Redis: a poison payload, a full Redis, Redis gone for good.

Each test runs real redis-server and worker processes; every accepted job must end terminal.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from jobs.store import JobStore
from tests.conftest import RedisServer
from tests.worker_harness import WorkerProcess, done, submit, tiny_model, wait_for

__all__ = ["tiny_model"]
DB = 11


pytestmark = pytest.mark.slow  # real processes for tens of seconds: full tier only


def adds(worker: WorkerProcess, marker: str) -> int:
    """How many samples whose prompt holds `marker` the worker admitted (fault log)."""
    path = worker.fault_dir / "adds.log"
    return sum(marker in line for line in path.read_text().splitlines()) if path.exists() else 0


def test_a_poison_payload_fails_alone_and_the_batch_carries_on(
    redis_server: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    url = redis_server.fresh_db(DB)
    store = JobStore(redis.Redis.from_url(url), result_ttl=300, job_timeout=60)
    worker = WorkerProcess(url, tiny_model, tmp_path, {"LDM_FAULT_STEP_SLEEP": "0.05"}).start()
    try:
        innocent = [submit(store, f"innocent {i}", steps=30) for i in range(3)]
        wait_for(store, innocent[0], {"running"})
        worker.signal(signal.SIGSTOP)
        try:
            poison = submit(store, "poison", steps=2)
            store.redis.hset(f"rq:job:{poison}", "data", b"\x00not json at all")
            later = submit(store, "a later job", steps=2)
        finally:
            worker.signal(signal.SIGCONT)
        record = done(store, poison)
        assert record.status.value == "failed", record
        assert record.error is not None and record.error.type == "invalid-payload", record.error
        for job_id in [*innocent, later]:
            assert done(store, job_id).status.value == "succeeded"
        assert worker.process is not None and worker.process.poll() is None, "worker died"
        assert all(adds(worker, f"innocent {i}") == 1 for i in range(3)), "innocents re-ran"
    finally:
        worker.stop()


def test_a_full_redis_neither_kills_the_worker_nor_strands_its_jobs(
    redis_server: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    url = redis_server.fresh_db(DB)
    client = redis.Redis.from_url(url)
    store = JobStore(client, result_ttl=300, job_timeout=120)
    env = {"LDM_FAULT_STEP_SLEEP": "0.1"}
    worker = WorkerProcess(url, tiny_model, tmp_path, env).start()
    try:
        jobs = [submit(store, f"while full {i}", steps=20, seed=i) for i in range(2)]
        wait_for(store, jobs[0], {"running"})
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", str(used // 2))  # noeviction: every write now fails
        try:
            time.sleep(4)  # the jobs finish sampling and try to write their images
            metrics = worker.metrics()
            assert metrics['ldm_worker_ready{model="default"}'] == 0.0, worker.log()
            assert worker.process is not None and worker.process.poll() is None, worker.log()
        finally:
            client.config_set("maxmemory", "0")
        for job_id in jobs:
            assert done(store, job_id, timeout=60).status.value == "succeeded", worker.log()
            assert store.get_image(job_id, 0) is not None
        deadline = time.monotonic() + 10
        while worker.metrics()['ldm_worker_ready{model="default"}'] != 1.0:
            assert time.monotonic() < deadline, "the worker never reported ready again"
            time.sleep(0.2)
        assert worker.process.poll() is None
        later = submit(store, "after the storm", steps=2)
        assert done(store, later).status.value == "succeeded"
    finally:
        client.config_set("maxmemory", "0")
        worker.stop()


def test_the_worker_exits_non_zero_once_redis_is_gone_past_the_retry_window(
    own_redis: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    server = own_redis
    env = {"LDM_REDIS_RETRY_SECONDS": "3"}
    worker = WorkerProcess(server.url, tiny_model, tmp_path, env).start()
    try:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        started = time.monotonic()
        code = worker.wait(timeout=30)
        elapsed = time.monotonic() - started
        assert code not in (0, None), worker.log()
        assert 3 <= elapsed < 20, (elapsed, worker.log())
    finally:
        worker.stop()
        server.stop()


def wait_for_log(worker: WorkerProcess, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in worker.log():
        assert worker.process is not None and worker.process.poll() is None, worker.log()
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)


def test_a_worker_started_before_redis_waits_for_it_within_the_retry_window(
    own_redis: RedisServer, tiny_model: Path, tmp_path: Path
) -> None:
    """Found in CI: Redis gone during the worker's startup (publishing its model, registering)
    killed it at once with a traceback instead of retrying for LDM_REDIS_RETRY_SECONDS."""
    own_redis.stop()
    env = {"LDM_REDIS_RETRY_SECONDS": "60"}
    worker = WorkerProcess(own_redis.url, tiny_model, tmp_path, env).spawn()
    try:
        wait_for_log(worker, "redis unavailable at startup")  # the model is loaded by now
        time.sleep(1.5)  # a retry or two
        own_redis.start()
        worker.registered(timeout=30)
        store = JobStore(redis.Redis.from_url(own_redis.url), result_ttl=300, job_timeout=60)
        assert done(store, submit(store, "once redis came", steps=2)).status.value == "succeeded"
    finally:
        worker.stop()
    own_redis.stop()
    brief = WorkerProcess(own_redis.url, tiny_model, tmp_path,
                          {"LDM_REDIS_RETRY_SECONDS": "2"}).spawn()  # fmt: skip
    try:
        wait_for_log(brief, "redis unavailable at startup")
        started = time.monotonic()
        code = brief.wait(timeout=30)
        assert code == 1 and 1 <= time.monotonic() - started < 20, brief.log()
        assert "Traceback" not in brief.log() and "gave up waiting for redis" in brief.log()
    finally:
        brief.stop()
