"""Contract test of every rq internal the batching worker relies on (re-run on any rq upgrade).

The bridge uses: Queue.dequeue_any (single queue -> LMOVE/BLMOVE into the intermediate queue),
Worker.prepare_execution / prepare_job_execution / handle_job_success / handle_job_failure /
cleanup_execution / heartbeat / register_birth / register_death / run_maintenance_tasks,
Execution.heartbeat, Job.heartbeat / cancel, Queue.enqueue_job(at_front), and
StartedJobRegistry.cleanup calling the worker's exception handlers before retrying or failing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import rq
from redis import Redis
from rq import Queue, Retry, Worker
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from workers.rq_bridge import TASK_NAME, RqBridge

QUEUE = "ldm:contract"


BRIDGES: list[RqBridge] = []


@pytest.fixture()
def redis(redis_url: str) -> Iterator[Redis]:
    yield Redis.from_url(redis_url)
    while BRIDGES:
        BRIDGES.pop().worker.unsubscribe()


def enqueue(redis: Redis, job_id: str | None = None, func: str = TASK_NAME) -> Job:
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    job_id = job_id or uuid.uuid4().hex
    return queue.enqueue_call(func, args=(job_id,), job_id=job_id, timeout=60, retry=Retry(max=1))


def bridge(redis: Redis, ttl: int = 30) -> RqBridge:
    b = RqBridge(redis, QUEUE, heartbeat_ttl=ttl, maintenance_interval=1)
    b.register()
    BRIDGES.append(b)
    return b


def status(redis: Redis, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=redis, serializer=JSONSerializer).get_status()


def test_rq_version_is_the_one_this_contract_was_written_for() -> None:
    assert rq.__version__.split(".")[0] == "3", (
        f"re-check workers/rq_bridge.py for rq {rq.__version__}"
    )


def test_one_queue_and_visible_to_rq_info(redis: Redis) -> None:
    b = bridge(redis)
    (worker,) = Worker.all(connection=redis)
    assert worker.name == b.name
    assert worker.queue_names() == [QUEUE]
    b.unregister()
    assert Worker.all(connection=redis) == []


def test_a_heartbeat_relists_a_worker_dropped_from_rqs_worker_sets(redis: Redis) -> None:
    """Cut off longer than its key lived, a worker is cleaned out of rq:workers by another's
    maintenance; once it can reach Redis again its next heartbeat lists it again."""
    from rq.worker_registration import clean_worker_registry, get_keys

    b = bridge(redis)
    queue = Queue(QUEUE, connection=redis, serializer=JSONSerializer)
    redis.delete(b.worker.key)  # its key expired during the partition
    clean_worker_registry(queue)  # a survivor's maintenance
    assert get_keys(queue=queue) == set() and get_keys(connection=redis) == set()
    b.heartbeat()
    assert get_keys(queue=queue) == {b.worker.key} == get_keys(connection=redis)
    assert [w.name for w in Worker.all(queue=queue)] == [b.name]


def test_dequeue_claim_heartbeat_succeed(redis: Redis) -> None:
    b = bridge(redis, ttl=30)
    job = enqueue(redis)
    q = b.queue
    dequeued = b.dequeue(None)
    assert dequeued is not None and dequeued.id == job.id
    assert redis.lrange(q.intermediate_queue_key, 0, -1) == [job.id.encode()]
    claim = b.claim(dequeued)
    assert redis.llen(q.intermediate_queue_key) == 0
    assert status(redis, job.id) == JobStatus.STARTED
    assert job.id in q.started_job_registry.get_job_ids()
    (key,) = redis.zrange(q.started_job_registry.key, 0, -1)
    score = redis.zscore(q.started_job_registry.key, key)
    assert time.time() + 25 < score <= time.time() + 31
    (worker,) = Worker.all(connection=redis)
    assert worker.get_state() == "busy"
    time.sleep(1.1)
    b.heartbeat()
    assert redis.zscore(q.started_job_registry.key, key) > score
    b.validate(claim)
    b.succeed(claim, {"images": 1})
    assert status(redis, job.id) == JobStatus.FINISHED
    assert job.id in q.finished_job_registry.get_job_ids()
    assert q.started_job_registry.get_job_ids() == []
    assert Job.fetch(job.id, connection=redis, serializer=JSONSerializer).return_value() == {
        "images": 1
    }


def test_fail_is_final_despite_retry(redis: Redis) -> None:
    b = bridge(redis)
    job = enqueue(redis)
    b.fail(b.claim(b.dequeue(None)), "nan", "non-finite latents")
    assert status(redis, job.id) == JobStatus.FAILED
    assert job.id in b.queue.failed_job_registry.get_job_ids()
    assert b.queue.count == 0
    assert "nan: non-finite latents" in (
        Job.fetch(job.id, connection=redis, serializer=JSONSerializer).exc_info or ""
    )


def test_cancel_running_and_hand_back(redis: Redis) -> None:
    b = bridge(redis)
    first, second = enqueue(redis), enqueue(redis)
    claim = b.claim(b.dequeue(None))
    b.cancel(claim)
    assert status(redis, first.id) == JobStatus.CANCELED
    assert first.id in b.queue.canceled_job_registry.get_job_ids()
    assert b.queue.started_job_registry.get_job_ids() == []
    held = b.claim(b.dequeue(None))
    third = enqueue(redis)
    b.hand_back(held)
    assert status(redis, second.id) == JobStatus.QUEUED
    assert b.queue.get_job_ids() == [second.id, third.id]  # back at the front
    assert b.queue.started_job_registry.get_job_ids() == []


def test_validate_refuses_other_functions(redis: Redis) -> None:
    b = bridge(redis)
    enqueue(redis, func="os.system")
    claim = b.claim(b.dequeue(None))
    with pytest.raises(ValueError, match="unexpected task"):
        b.validate(claim)


@pytest.mark.slow  # seconds of real processes or files: full tier
def test_dead_worker_job_requeued_once_then_failed_abandoned(redis: Redis) -> None:
    job = enqueue(redis)
    dead = bridge(redis, ttl=2)
    dead.claim(dead.dequeue(None))  # then it "dies": no more heartbeats
    seen: list[tuple[str, bool]] = []
    survivor = bridge(redis, ttl=30)
    survivor.on_abandoned = lambda job_id, requeued: seen.append((job_id, requeued))
    time.sleep(3.2)
    survivor.worker.last_cleaned_at = None  # maintenance due now
    survivor.maintain()
    assert seen == [(job.id, True)]
    assert status(redis, job.id) == JobStatus.QUEUED
    assert Job.fetch(job.id, connection=redis, serializer=JSONSerializer).retries_left == 0
    dead.claim(dead.dequeue(None))  # second attempt dies too
    time.sleep(3.2)
    survivor.worker.last_cleaned_at = None
    survivor.maintain()
    assert seen[-1] == (job.id, False)
    assert status(redis, job.id) == JobStatus.FAILED
    exc = Job.fetch(job.id, connection=redis, serializer=JSONSerializer).exc_info or ""
    assert "AbandonedJobError" in exc


def test_blocking_dequeue_times_out_empty(redis: Redis) -> None:
    b = bridge(redis)
    started = time.monotonic()
    assert b.dequeue(1) is None
    assert 0.9 < time.monotonic() - started < 3
