"""All rq bookkeeping of the batching worker, in one place.

rq has no batch dequeue and a `SimpleWorker` neither heartbeats during a job nor runs several jobs
at once, so the loop never calls `Worker.work()`. It keeps rq's registries true itself, through the
same internals `SimpleWorker.execute_job` uses (pinned in tests/test_worker_rq_contract.py):

- dequeue: `Queue.dequeue_any` on exactly one queue -> `BLMOVE`/`LMOVE` into the intermediate queue;
- start: `prepare_execution` (Execution + StartedJobRegistry entry scored now + heartbeat TTL) and
  `prepare_job_execution` (status started, removed from the intermediate queue);
- end: `handle_job_success` / `handle_job_failure` (FinishedJobRegistry / FailedJobRegistry),
  `Job.cancel` (CanceledJobRegistry), or a hand-back to the front of the queue;
- liveness: one pipelined heartbeat of the worker and every claimed execution, from a thread;
- recovery: `run_maintenance_tasks` -> `StartedJobRegistry.cleanup` requeues a dead worker's jobs
  once (`Retry(max=1)`), then fails them with `AbandonedJobError`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker, worker_registration
from rq.exceptions import (
    AbandonedJobError,
    DequeueTimeout,
    DeserializationError,
    InvalidJobOperation,
)
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.utils import now
from rq.worker import WorkerStatus

log = logging.getLogger(__name__)

TASK_NAME = "workers.tasks.txt2img"
AbandonedHandler = Callable[[str, bool], None]  # (job id, requeued) -> None


class InvalidPayload(ValueError):
    """A job's rq payload is not our task's JSON (garbage, another function): it fails alone."""


class BatchWorker(SimpleWorker):
    """rq's view of one batching worker: registration, heartbeats, maintenance; no work()."""

    def __init__(self, *args: Any, heartbeat_ttl: int = 60, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heartbeat_ttl = heartbeat_ttl
        self.stop_requests: set[str] = set()  # job ids from `rq job stop` (pubsub thread)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Every claimed job's StartedJobRegistry score is now + this, refreshed by heartbeats."""
        return self.heartbeat_ttl

    def request_stop_execution(self, execution_id: str) -> None:
        """`rq job stop`: ask the loop to cancel that job at its next step (pubsub thread)."""
        execution = self.executions.get(execution_id)
        if execution is not None:
            self.stop_requests.add(execution.job_id)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """Never used: the batching loop drives this worker step by step."""
        raise NotImplementedError("BatchWorker is driven by workers.loop, not rq's work loop")


@dataclass
class Claim:
    """A job this worker took from the queue and keeps alive until it ends."""

    job: Job
    execution: Execution
    claimed_at: float = field(default_factory=time.monotonic)


class RqBridge:
    """Dequeue, start, heartbeat and end rq jobs for the batching loop (thread-safe)."""

    def __init__(
        self,
        connection: Redis,
        queue_name: str,
        *,
        name: str | None = None,
        heartbeat_ttl: int = 60,
        maintenance_interval: int = 60,
        result_ttl: int = 3600,
    ) -> None:
        self.connection = connection
        self.queue = Queue(queue_name, connection=connection, serializer=JSONSerializer)
        self.worker = BatchWorker(
            [self.queue],
            name=name,
            connection=connection,
            serializer=JSONSerializer,
            worker_ttl=heartbeat_ttl,
            maintenance_interval=maintenance_interval,
            default_result_ttl=result_ttl,
            heartbeat_ttl=heartbeat_ttl,
        )
        self.heartbeat_ttl = heartbeat_ttl
        self.claims: dict[str, Claim] = {}
        self.lock = threading.RLock()
        self.on_abandoned: AbandonedHandler | None = None
        self.born = False
        self.worker.push_exc_handler(self._abandoned_handler)

    @property
    def name(self) -> str:
        """The worker's rq name (also its Redis client name)."""
        return self.worker.name

    def register(self) -> None:
        """Announce this worker to rq (birth, pubsub commands, state) on its single queue."""
        assert len(self.worker.queues) == 1, "a batching worker listens on exactly one queue"
        if not self.born:  # a retried registration (Redis away meanwhile) is born once
            self.worker.register_birth()
            self.born = True
        self.worker.subscribe()
        self.worker.set_state(WorkerStatus.STARTED)
        log.info("rq worker %s listening on %s", self.name, self.queue.name)

    def unregister(self) -> None:
        """Record this worker's death so `rq info` stops listing it."""
        self.worker.register_death()
        self.worker.unsubscribe()

    def maintain(self) -> None:
        """Run rq's registry maintenance when due: this is where dead workers' jobs recover."""
        if self.worker.should_run_maintenance_tasks:
            self.worker.run_maintenance_tasks()

    def dequeue(self, timeout: int | None) -> Job | None:
        """Take one job (non-blocking when timeout is None); it sits in the intermediate queue."""
        self.maintain()
        try:
            result = Queue.dequeue_any(
                [self.queue],
                timeout,
                connection=self.connection,
                job_class=self.worker.job_class,
                serializer=self.worker.serializer,
            )
        except DequeueTimeout:
            return None
        return result[0] if result else None

    def claim(self, job: Job) -> Claim:
        """Mark a dequeued job started and take it out of the intermediate queue."""
        with self.lock:
            execution = self.worker.prepare_execution(job)
            claim = Claim(job, execution)
            self.claims[job.id] = claim
            try:
                self.worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
            except DeserializationError:
                # rq decodes the payload for its process title only after the bookkeeping ran:
                # the job is started and ours to fail; validate() says why.
                log.warning("job %s has an undecodable payload", job.id)
            return claim

    def validate(self, claim: Claim) -> None:
        """InvalidPayload unless the job carries our task (JSON-decoding it, never unpickling)."""
        try:
            func_name = claim.job.func_name
        except DeserializationError as exc:
            raise InvalidPayload(f"the job's payload could not be decoded: {exc}") from None
        if func_name != TASK_NAME:
            raise InvalidPayload(f"unexpected task {func_name!r}; expected {TASK_NAME}")

    def succeed(self, claim: Claim, result: dict[str, Any]) -> None:
        """Move a job to FinishedJobRegistry with a small JSON result."""
        with self.lock:
            job = claim.job
            job.ended_at = now()
            job._result = result
            job._status = JobStatus.FINISHED
            self.worker.handle_job_success(
                job, self.queue, self.queue.started_job_registry, claim.execution
            )
            self._release(claim)

    def fail(self, claim: Claim, reason: str, message: str) -> None:
        """Move a job to FailedJobRegistry for good: only a dead worker earns its retry."""
        with self.lock:
            job = claim.job
            job.ended_at = now()
            job.retries_left = 0  # Retry(max=1) is for abandoned jobs, not for our own verdicts
            exc_string = f"{reason}: {message}"
            self.worker.handle_job_failure(
                job, self.queue, exc_string=exc_string, execution=claim.execution
            )
            self._release(claim)

    def cancel(self, claim: Claim) -> None:
        """Move a running job to CanceledJobRegistry and drop its execution."""
        with self.lock:
            with self.connection.pipeline() as pipeline:
                self.worker.cleanup_execution(
                    claim.job, pipeline=pipeline, execution=claim.execution
                )
                pipeline.execute()
            try:
                claim.job.cancel()
            except InvalidJobOperation:
                log.info("job %s was already canceled in rq", claim.job.id)
            self._release(claim)

    def hand_back(self, claim: Claim) -> None:
        """Return a started job to the front of its queue (graceful shutdown ran out of time)."""
        with self.lock:
            self.claims.pop(claim.job.id, None)
            job = claim.job
            job.started_at = None
            job.ended_at = None
            # Enqueue first: dying in between leaves a queued job with a stale registry entry,
            # which cleanup skips (status is no longer started); never a job in neither place.
            self.queue.enqueue_job(job, at_front=True)
            with self.connection.pipeline() as pipeline:
                self.worker.cleanup_execution(job, pipeline=pipeline, execution=claim.execution)
                pipeline.execute()
            self._idle_if_empty()

    def heartbeat(self) -> None:
        """Extend the worker key and every claimed execution by the heartbeat TTL, in one trip;
        re-list the worker in rq's worker sets, which another worker's maintenance empties of the
        workers cut off longer than their key lived (a healed partition: test_multihost.py)."""
        with self.lock, self.connection.pipeline() as pipeline:
            self.worker.heartbeat(self.heartbeat_ttl + 10, pipeline=pipeline)
            worker_registration.register(self.worker, pipeline=pipeline)  # SADDs: idempotent
            for claim in self.claims.values():
                claim.execution.heartbeat(
                    claim.job.started_job_registry, self.heartbeat_ttl, pipeline=pipeline
                )
                claim.job.heartbeat(now(), self.heartbeat_ttl, pipeline=pipeline)
            pipeline.execute()

    def stop_requested(self, job_id: str) -> bool:
        """Whether `rq job stop` (pubsub) asked to stop this job."""
        return job_id in self.worker.stop_requests

    def _release(self, claim: Claim) -> None:
        """Stop holding (and heartbeating) a job whose end rq has recorded."""
        self.claims.pop(claim.job.id, None)
        self._idle_if_empty()

    def _idle_if_empty(self) -> None:
        """rq shows the worker idle once it holds no jobs."""
        if not self.claims:
            self.worker.set_state(WorkerStatus.IDLE)

    def _abandoned_handler(self, job: Job, exc_type: Any, exc: Any, tb: Any) -> bool:
        """Called by StartedJobRegistry.cleanup for a dead worker's job, before retry/fail."""
        if exc_type is AbandonedJobError and self.on_abandoned is not None:
            requeued = bool(job.retries_left and job.retries_left > 0)
            try:
                self.on_abandoned(job.id, requeued)
            except Exception:
                log.exception("abandoned-job hook failed for %s", job.id)
        return True


class Heartbeat(threading.Thread):
    """Daemon thread that heartbeats the bridge every `interval` seconds until stopped."""

    def __init__(self, bridge: RqBridge, interval: float) -> None:
        super().__init__(name="ldm-heartbeat", daemon=True)
        self.bridge = bridge
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        """Beat until stopped; Redis hiccups are logged, never fatal here."""
        while not self.stopped.wait(self.interval):
            try:
                self.bridge.heartbeat()
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    def stop(self) -> None:
        """Stop beating (the worker is exiting)."""
        self.stopped.set()
