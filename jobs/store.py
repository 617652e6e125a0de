"""JobStore: job records, rq enqueue, progress, images, cancellation and tombstones in Redis.

Lifecycle (all transitions are conditional on the current status, so API and worker never race):
  API  create()            -> queued (record + rq job + the owner's index, jobs/listing.py, in one
                              MULTI; per-owner quota: jobs/quota.py)
  wkr  start()             queued|running -> running  (None: canceled/expired meanwhile, skip it)
  wkr  report_progress()   every step for all active jobs; returns the ids to stop
  wkr  finish()            -> succeeded (with images) | failed (with JobError) | canceled
  API  request_cancel()    queued -> canceled at once; running -> flag the worker sees next step
  API  reconcile()         repairs records whose rq job expired, was abandoned or was requeued
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, cast

from redis import Redis
from redis.client import Pipeline
from rq import Queue, Retry
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from jobs import keys
from jobs.fleet import Fleet, rq_queue
from jobs.listing import OwnerJobs
from jobs.quota import ActiveJobs, QueuePlaces
from jobs.record import JobError, JobRecord, Usage
from jobs.record_scripts import FINISH, PROGRESS, TRANSITION
from jobs.schema import JobStatus

logger = logging.getLogger(__name__)

ACTIVE = (JobStatus.queued, JobStatus.running)
# Tombstones outlive the record by this long so GET answers 410, not 404, for a week.
TOMBSTONE_TTL_S = 7 * 24 * 3600
# rq keeps a failed job's hash this long (rq info / post-mortems).
FAILURE_TTL_S = 7 * 24 * 3600
# rq re-runs a job whose worker died this many times (then fails it as abandoned).
RETRIES = 1
NO_JOB_LIMIT = 2**31 - 1  # the active-jobs script's limit when only the cost budget applies
# Slack for rq noticing a dead worker (maintenance every 600 s) before it requeues or fails a job.
ABANDON_DETECTION_S = 3600


class QueueFullError(Exception):
    """The model's queue already holds `max_queue` jobs."""

    def __init__(self, model: str, max_queue: int) -> None:
        super().__init__(f"the queue of model {model!r} holds {max_queue} jobs")
        self.model = model


class JobStore:
    """Typed access to everything a job keeps in Redis; one instance per process."""

    def __init__(
        self,
        redis: Redis,
        *,
        result_ttl: int = 3600,
        job_timeout: int = 600,
        queue_ttl: int | None = None,
    ) -> None:
        self.redis = redis
        self.result_ttl = result_ttl
        self.job_timeout = job_timeout
        # A job still queued after queue_ttl seconds expires (rq drops it; reconcile() says so).
        self.queue_ttl = queue_ttl if queue_ttl is not None else result_ttl
        # Concurrency quota; its set must outlive a job's longest stay in queued/running.
        active_ttl = self.queue_ttl + (1 + RETRIES) * job_timeout + ABANDON_DETECTION_S
        self.active = ActiveJobs(redis, ttl=active_ttl)
        self.owner_jobs = OwnerJobs(redis, lifetime_s=active_ttl + result_ttl)
        self.places = QueuePlaces(redis)
        self.fleet = Fleet(redis)  # what workers publish; live workers, the oldest queued job
        self._transition = redis.register_script(TRANSITION)
        self._finish = redis.register_script(FINISH)
        self._progress = redis.register_script(PROGRESS)

    def queue(self, model: str) -> Queue:
        """The rq queue (JSON serializer) of a model."""
        return rq_queue(self.redis, model)

    # --- API side -------------------------------------------------------------------------------

    def create(
        self,
        record: JobRecord,
        *,
        max_queue: int | None = None,
        max_active: int = 0,
        cost_budget: int = 0,
        inputs: Mapping[str, bytes] | None = None,
    ) -> None:
        """Save a queued record and enqueue its rq job in one MULTI/EXEC. QueueFullError if the
        queue holds `max_queue` jobs (a place is reserved atomically first); ActiveLimitError /
        CostLimitError if the owner has `max_active` jobs queued or running or their cost would
        pass `cost_budget` (0: off). `inputs` (an image task's uploads) are stored beside the
        record, in the same transaction, for as long as the job can still run."""
        model, queue = record.request.model, self.queue(record.request.model)
        if max_queue is not None and not self.places.reserve(
            queue.key, model, record.id, max_queue
        ):
            raise QueueFullError(model, max_queue)
        try:
            quota = max_active > 0 or cost_budget > 0
            if quota:
                limit = max_active or NO_JOB_LIMIT
                self.active.reserve(record.owner, record.id, limit, record.request.cost,
                                    cost_budget)  # fmt: skip
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.multi()  # rq requires an explicit transaction on a caller's pipeline
                self._write_new_job(pipe, queue, record, quota=quota)
                ttl = self.queue_ttl + self.job_timeout * (RETRIES + 1) + self.result_ttl
                for name, data in (inputs or {}).items():
                    pipe.set(keys.job_input(record.id, name), data, ex=ttl)
                if max_queue is not None:
                    self.places.confirm(pipe, model, record.id)
                pipe.execute()
        except Exception:
            if max_active > 0 or cost_budget > 0:
                self.active.release(record.owner, record.id)
            if max_queue is not None:
                self.places.release(model, record.id)
            raise

    def _write_new_job(self, pipe: Pipeline, queue: Queue, record: JobRecord, quota: bool) -> None:
        """Queue the record, the rq job (Retry once, TTLs) and the quota confirmation on `pipe`."""
        request = record.request
        pipe.hset(keys.job(record.id), mapping=cast("Mapping[Any, Any]", record.to_hash()))
        queue.enqueue_call(
            keys.TXT2IMG_FUNCTION,
            args=(record.id,),
            job_id=record.id,
            timeout=self.job_timeout,
            ttl=self.queue_ttl,
            result_ttl=self.result_ttl,
            failure_ttl=FAILURE_TTL_S,
            retry=Retry(max=RETRIES),
            description=f"txt2img {request.width}x{request.height} steps={request.steps}",
            pipeline=pipe,
        )
        if quota:
            self.active.confirm(pipe, record.owner, record.id)
        self.owner_jobs.add(pipe, record)
        if record.webhook is not None:  # the deliverer reconciles it until it ends
            pipe.zadd(keys.webhook_jobs(), {record.id: record.created_at})

    def get(self, job_id: str) -> JobRecord | None:
        """The job record, or None when unknown or expired."""
        raw = self.redis.hgetall(keys.job(job_id))
        return JobRecord.from_hash(job_id, raw) if raw else None

    def tombstone(self, job_id: str) -> str | None:
        """Owner of an expired job (the record is gone but the job existed), else None."""
        value = self.redis.get(keys.gone(job_id))
        return value.decode() if isinstance(value, bytes) else value

    def get_image(self, job_id: str, index: int) -> bytes | None:
        """Encoded bytes of image `index`, or None."""
        value = self.redis.get(keys.image(job_id, index))
        return value.encode() if isinstance(value, str) else value

    def get_inputs(self, job_id: str, names: Sequence[str]) -> dict[str, bytes]:
        """The stored uploads of an image task that are still there, by name."""
        values = self.redis.mget([keys.job_input(job_id, name) for name in names])
        found = zip(names, values, strict=True)
        return {name: value.encode() if isinstance(value, str) else value
                for name, value in found if value is not None}  # fmt: skip

    def queue_position(self, record: JobRecord) -> int | None:
        """0-based position in the model's rq queue (0 = next), None when not in it."""
        position = self.redis.lpos(self.queue(record.request.model).key, record.id)
        return position if isinstance(position, int) else None

    def request_cancel(self, job_id: str) -> JobStatus | None:
        """Cancel: a queued job becomes canceled and never runs; a running one is flagged."""
        self.redis.set(keys.cancel(job_id), "1", ex=self.job_timeout + self.result_ttl)
        if self.finish(job_id, JobStatus.canceled, allowed=(JobStatus.queued,)):
            self._cancel_rq_job(job_id)
            return JobStatus.canceled
        record = self.get(job_id)
        return record.status if record else None

    def reconcile(self, record: JobRecord) -> JobRecord:
        """Align an active record with its rq job (expired, abandoned, requeued, canceled)."""
        if record.status.terminal:
            return record
        try:
            rq_status = self._rq_job(record.id).get_status(refresh=False)
        except NoSuchJobError:
            rq_status = None
        if rq_status is None and record.status is JobStatus.queued:
            self.finish(record.id, JobStatus.expired, allowed=(JobStatus.queued,))
        elif rq_status == RqStatus.FAILED:
            error = JobError(type="abandoned", message="the worker running this job stopped")
            self.finish(record.id, JobStatus.failed, error=error)
        elif rq_status in (RqStatus.CANCELED, RqStatus.STOPPED):
            self.finish(record.id, JobStatus.canceled)
        elif record.status is JobStatus.running and self.queue_position(record) is not None:
            # Back in the queue list (not merely popped and not yet started): rq retried it.
            self._set(record.id, (JobStatus.running,), {"status": JobStatus.queued.value})
        else:
            return record
        return self.get(record.id) or record

    # --- worker side ----------------------------------------------------------------------------

    def start(self, job_id: str) -> JobRecord | None:
        """Mark a dequeued job running (attempts += 1); None means skip it (canceled/gone)."""
        record = self.get(job_id)
        if record is None or record.status.terminal:
            return None
        now = time.time()
        fields = {
            "status": JobStatus.running.value,
            "started_at": repr(now),
            "queue_wait_s": repr(now - record.created_at),
            "progress_step": "0",
            "progress_total": str(record.request.steps),
        }
        if not self._set(job_id, ACTIVE, fields, increment="attempts"):
            return None
        return self.get(job_id)

    def report_progress(self, progress: Mapping[str, tuple[int, int]]) -> set[str]:
        """Write (step, total) for many running jobs in one round trip; returns ids to stop now."""
        if not progress:
            return set()
        ids = list(progress)
        job_keys = [keys.webhook_outbox(), keys.webhook_messages()]
        job_keys += [keys.job(job_id) for job_id in ids] + [keys.cancel(job_id) for job_id in ids]
        args = [str(value) for job_id in ids for value in (*progress[job_id], job_id)]
        stop = self._progress(keys=job_keys, args=args)
        return {job_id for job_id, flag in zip(ids, stop, strict=True) if int(flag)}

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        images: Sequence[bytes] = (),
        sampling_s: float | None = None,
        decode_s: float | None = None,
        error: JobError | None = None,
        allowed: Sequence[JobStatus] = ACTIVE,
        usage: Usage | None = None,
    ) -> bool:
        """Atomically end a job: status, images, timings, TTLs, tombstone, and its webhook event
        in the outbox; False if not active."""
        if not status.terminal:
            raise ValueError(f"finish() needs a terminal status, got {status}")
        fields = {"status": status.value, "finished_at": repr(time.time())}
        if sampling_s is not None:
            fields["sampling_s"] = repr(float(sampling_s))
        if decode_s is not None:
            fields["decode_s"] = repr(float(decode_s))
        if error is not None:
            fields.update(error_type=error.type, error_message=error.message)
        if usage is not None:
            fields["usage"] = usage.model_dump_json()
        flat = [item for pair in fields.items() for item in pair]
        script_keys = [keys.job(job_id), keys.gone(job_id), keys.webhook_outbox(),
                       keys.webhook_messages(), keys.webhook_jobs()]  # fmt: skip
        script_keys += [keys.image(job_id, index) for index in range(len(images))]
        args: list[str | bytes | int] = [",".join(allowed), self.result_ttl, TOMBSTONE_TTL_S]
        args += [job_id, len(flat), *flat, *images]
        return bool(self._finish(keys=script_keys, args=args))

    def requeue(self, job_id: str) -> bool:
        """Put a running record back to queued (worker handing work back to rq on shutdown)."""
        return self._set(job_id, (JobStatus.running,), {"status": JobStatus.queued.value})

    # --- internals ------------------------------------------------------------------------------

    def _set(
        self,
        job_id: str,
        allowed: Sequence[JobStatus],
        fields: Mapping[str, str],
        increment: str = "",
    ) -> bool:
        flat = [item for pair in fields.items() for item in pair]
        return bool(
            self._transition(keys=[keys.job(job_id)], args=[",".join(allowed), increment, *flat])
        )

    def _rq_job(self, job_id: str) -> Job:
        return Job.fetch(job_id, connection=self.redis, serializer=JSONSerializer)

    def _cancel_rq_job(self, job_id: str) -> None:
        try:
            job = self._rq_job(job_id)
            if job.get_status(refresh=False) == RqStatus.QUEUED:
                job.cancel()
        except (NoSuchJobError, InvalidJobOperation):
            logger.info("rq job %s already left the queue; the worker will skip it", job_id)
