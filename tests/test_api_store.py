"""jobs/: request bounds, record round trip and the JobStore contract against a real Redis."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from jobs import keys
from jobs.record import JobError, JobRecord
from jobs.schema import DEFAULT_LIMITS, JobStatus, Limits, Txt2ImgRequest, request_model
from jobs.store import JobStore, QueueFullError
from tests.api_harness import store_fixture  # noqa: F401


def queued(job_id: str = "job-1", **request: object) -> JobRecord:
    """A fresh queued record as the API would create it."""
    resolved = Txt2ImgRequest(prompt="a cat", width=64, height=64, **request).resolve("default")
    return JobRecord(
        id=job_id,
        status=JobStatus.queued,
        owner="owner-1",
        request=resolved,
        created_at=time.time(),
        progress_total=resolved.steps,
    )


def test_request_model_takes_bounds_from_limits() -> None:
    model = request_model(Limits(max_steps=10, max_pixels=64 * 128, default_size=64))
    schema = model.model_json_schema()["properties"]
    assert schema["steps"]["maximum"] == 10 and schema["width"]["multipleOf"] == 8
    with pytest.raises(ValidationError, match="steps"):
        model(prompt="x", steps=11)
    with pytest.raises(ValidationError, match="exceeds the maximum"):
        model(prompt="x", width=128, height=128)
    assert model(prompt="x", width=128, height=64).steps == 10
    assert Txt2ImgRequest.limits is DEFAULT_LIMITS


def test_resolve_fills_seed_and_model() -> None:
    request = Txt2ImgRequest(prompt="x", width=64, height=64)
    seeds = {request.resolve("default").seed for _ in range(5)}
    assert len(seeds) > 1
    assert request.resolve("m", seed=7).seed == 7
    assert Txt2ImgRequest(prompt="x", seed=3, model="other").resolve("m").model_dump()["seed"] == 3


def test_record_hash_round_trip() -> None:
    record = queued().model_copy(
        update={"error": JobError(type="nan", message="NaN latents"), "sampling_s": 1.25}
    )
    raw = {k.encode(): v.encode() for k, v in record.to_hash().items()}
    assert JobRecord.from_hash(record.id, raw) == record
    assert record.to_hash()["output_format"] == "png" and record.to_hash()["num_images"] == "1"


def test_create_enqueues_rq_job_with_contract(store: JobStore) -> None:
    record = queued()
    store.create(record)
    assert store.get(record.id) == record
    queue = store.queue("default")
    assert queue.name == keys.queue_name("default") == "ldm:default"
    assert queue.job_ids == [record.id]
    job = Job.fetch(record.id, connection=store.redis, serializer=JSONSerializer)
    assert job.func_name == keys.TXT2IMG_FUNCTION and job.args == [record.id]
    assert job.retries_left == 1 and job.timeout == store.job_timeout
    assert store.queue_position(record) == 0


def test_create_refuses_when_queue_full(store: JobStore) -> None:
    store.create(queued("a"), max_queue=1)
    with pytest.raises(QueueFullError):
        store.create(queued("b"), max_queue=1)
    assert store.get("b") is None and store.queue("default").job_ids == ["a"]


def test_worker_lifecycle_success(store: JobStore) -> None:
    store.create(queued())
    started = store.start("job-1")
    assert started is not None and started.status is JobStatus.running
    assert started.attempts == 1 and started.queue_wait_s is not None
    assert store.report_progress({"job-1": (3, 25)}) == set()
    assert store.get("job-1").progress_step == 3  # type: ignore[union-attr]
    assert store.finish("job-1", JobStatus.succeeded, images=[b"img"], sampling_s=2.0, decode_s=0.5)
    done = store.get("job-1")
    assert done is not None and done.status is JobStatus.succeeded and done.progress_step == 25
    assert done.sampling_s == 2.0 and done.finished_at is not None
    assert store.get_image("job-1", 0) == b"img"
    for key in (keys.job("job-1"), keys.image("job-1", 0)):
        assert 0 < store.redis.ttl(key) <= store.result_ttl
    assert store.redis.ttl(keys.gone("job-1")) > store.result_ttl
    assert store.tombstone("job-1") == "owner-1"
    assert not store.finish("job-1", JobStatus.failed), "terminal records never change"


def test_cancel_queued_never_runs(store: JobStore) -> None:
    store.create(queued())
    assert store.request_cancel("job-1") is JobStatus.canceled
    job = Job.fetch("job-1", connection=store.redis, serializer=JSONSerializer)
    assert job.get_status() == RqStatus.CANCELED
    assert store.queue("default").job_ids == []
    assert store.start("job-1") is None, "a worker that already popped it must skip it"
    worker = SimpleWorker([store.queue("default")], connection=store.redis)
    assert not worker.work(burst=True), "nothing left to run"


def test_cancel_running_flags_the_worker(store: JobStore) -> None:
    store.create(queued("a"))
    store.create(queued("b"))
    store.start("a")
    store.start("b")
    assert store.request_cancel("a") is JobStatus.running
    assert store.report_progress({"a": (1, 25), "b": (1, 25)}) == {"a"}
    assert store.finish("a", JobStatus.canceled)
    assert store.get("a").status is JobStatus.canceled  # type: ignore[union-attr]


def test_reconcile_expired_and_abandoned(store: JobStore) -> None:
    store.create(queued("gone"))
    store.redis.delete(Job.key_for("gone"))  # rq's queue TTL dropped it
    assert store.reconcile(store.get("gone")).status is JobStatus.expired  # type: ignore[arg-type]

    store.create(queued("dead"))
    store.start("dead")
    job = Job.fetch("dead", connection=store.redis, serializer=JSONSerializer)
    job.set_status(RqStatus.FAILED)
    fixed = store.reconcile(store.get("dead"))  # type: ignore[arg-type]
    assert fixed.status is JobStatus.failed and fixed.error is not None
    assert fixed.error.type == "abandoned"

    store.create(queued("popped"))
    store.redis.lrem(store.queue("default").key, 0, "popped")  # a worker holds it
    store.start("popped")
    assert store.reconcile(store.get("popped")).status is JobStatus.running  # type: ignore[arg-type]

    store.create(queued("again"))
    store.start("again")  # still in the queue list: rq requeued it after its worker died
    assert store.reconcile(store.get("again")).status is JobStatus.queued  # type: ignore[arg-type]


def test_live_workers_counts_only_heartbeating_workers(store: JobStore) -> None:
    assert store.fleet.live_workers("default") == 0
    worker = SimpleWorker([store.queue("default")], connection=store.redis)
    worker.register_birth()
    assert store.fleet.live_workers("default") == 1
    store.redis.delete(worker.key)  # heartbeat key expired: the worker died
    assert store.fleet.live_workers("default") == 0
