"""The continuous-batching loop: admit between UNet steps, step once, retire, report, repeat."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import cast

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisFull
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.images import BadImage
from jobs.record import JobError
from jobs.schema import JobStatus, Task
from jobs.store import JobStore
from model.engine import Sample
from workers import batching
from workers.backend import Backend
from workers.fair_share import FairStepper
from workers.images import job_inputs
from workers.job_in_flight import JobInFlight
from workers.metrics import WorkerMetrics
from workers.retire import Retirer, classify, public_message
from workers.rq_bridge import Claim, InvalidPayload, RqBridge
from workers.settings import WorkerSettings

log = logging.getLogger(__name__)
REDIS_FULL_BACKOFF_S = 1.0  # no new claims for this long after Redis refused a write


class BatchLoop:
    """Drives one BatchEngine from one rq queue until stopped; `serve()` returns the exit code."""

    def __init__(
        self,
        settings: WorkerSettings,
        backend: Backend,
        bridge: RqBridge,
        store: JobStore,
        metrics: WorkerMetrics,
        touch: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.engine = backend.engine_factory()
        self.bridge = bridge
        self.store = store
        self.metrics = metrics
        self.touch = touch
        self.retirer = Retirer(store, bridge, metrics, settings.model_name)
        self.jobs: dict[str, JobInFlight] = {}  # in claim order
        self.stepper = FairStepper()  # which shape group steps next
        self.next_group = 1
        self.stopping = False
        self.deadline = float("inf")
        self.redis_full_until = 0.0  # Redis refused a write (maxmemory): claim nothing till then

    # --- lifecycle ------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: stop admitting and drain; a second signal hands work back at once."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            log.warning("second %s: handing running jobs back now", signal.Signals(signum).name)
            self.deadline = 0.0
            return
        log.info(
            "%s: draining %d running jobs (grace %.0fs)",
            signal.Signals(signum).name,
            len(self.jobs),
            self.settings.shutdown_grace,
        )
        self.stopping = True
        self.deadline = time.monotonic() + self.settings.shutdown_grace

    def busy(self) -> bool:
        """True while samples are in the engine (the watchdog only judges a busy worker)."""
        return bool(self.jobs)

    def serve(self) -> int:
        """Serve until a graceful stop (0); Redis outages longer than the retry window and
        unexpected errors propagate to the caller (which exits non-zero)."""
        outage_since: float | None = None
        while True:
            try:
                if self.stopping and (not self.jobs or time.monotonic() >= self.deadline):
                    self.retirer.collect(wait=None)  # encoding takes well under a second
                    self.hand_back_all()
                    log.info("worker stopped")
                    return 0
                if outage_since is not None:
                    self.bridge.connection.ping()  # raises while Redis is still away
                    self.release_untracked()
                    outage_since = None
                self.iterate()
            except RedisFull as exc:  # never fatal: sampling goes on, endings wait their turn
                log.warning("redis full (%s): no new jobs for %.0fs", exc, REDIS_FULL_BACKOFF_S)
                self.redis_full_until = time.monotonic() + REDIS_FULL_BACKOFF_S
                self.metrics.ready.set(0)
                self.touch()
                time.sleep(0.2)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                now = time.monotonic()
                outage_since = outage_since or now
                if now - outage_since > self.settings.redis_retry_seconds:
                    raise
                log.warning("redis unavailable (%s); retrying", exc)
                self.touch()
                time.sleep(1.0)

    def ready(self) -> bool:
        """Whether Redis takes our writes (no refused ending waits, no recent refusal)."""
        return not self.retirer.writes and time.monotonic() >= self.redis_full_until

    def iterate(self) -> None:
        """One round: retry waiting endings, claim jobs, admit, step once, retire, report."""
        writes = self.retirer.writes
        writes.retry()
        self.retirer.collect()
        self.metrics.ready.set(1 if self.ready() else 0)
        self.fill()
        if len(self.engine) == 0:
            if self.retirer.encoding:  # nothing to sample: store what finishes encoding
                self.retirer.collect(wait=0.05)
            elif writes:  # nothing to sample: wait for the next retry instead of spinning
                self.touch()
                time.sleep(min(1.0, max(0.05, writes.seconds_to_next_try())))
            return
        try:
            group = self.stepper.choose(self.engine.step_costs())
            rows = len(self.engine.groups()[group])
            finished = self.engine.step(group)
        except Exception as exc:
            self.on_step_failure(exc)
            return
        self.touch()
        self.metrics.batch_size.observe(rows)
        self.metrics.denoising_steps.inc(rows)
        for handle in finished:
            self.on_sample_done(handle)
        self.retire_complete()
        self.report_progress()
        self.enforce_timeouts()
        self.metrics.running_samples.set(len(self.engine))

    # --- claiming and admission -----------------------------------------------------------------

    def fill(self) -> None:
        """Claim queued jobs one at a time while the batch has room (block briefly when idle),
        admitting each one's samples right away so the next claim sees the true occupancy."""
        while True:
            self.admit()
            if not batching.should_dequeue(
                self.slots(), self.settings.max_batch, draining=self.stopping or not self.ready()
            ):
                return
            idle = not self.jobs and not self.retirer.encoding
            timeout = self.settings.idle_poll_seconds if idle else None
            rq_job = self.bridge.dequeue(timeout)
            if rq_job is None:
                return
            self.accept(self.bridge.claim(rq_job))

    def slots(self) -> list[batching.Slot]:
        """The batching policy's view of every held job, in claim order."""
        return [job.slot for job in self.jobs.values()]

    def accept(self, claim: Claim) -> None:
        """Start our record for a claimed job, or end it at once (canceled, undecodable)."""
        job_id = claim.job.id
        try:
            self.bridge.validate(claim)
        except InvalidPayload as exc:
            self.refuse(claim, "invalid-payload", str(exc))
            return
        record = self.store.get(job_id)
        if record is None or record.status.terminal:
            log.info("job %s skipped: canceled or expired before it was claimed", job_id)
            self.bridge.cancel(claim)
            return
        timeout = self.settings.job_timeout
        if claim.job.timeout and claim.job.timeout > 0:
            timeout = min(timeout, float(claim.job.timeout))
        inputs = {}
        if record.request.task not in (Task.txt2img, Task.sample):  # no uploads
            try:
                inputs = job_inputs(self.store, job_id, record.request)
            except BadImage as exc:
                self.refuse(claim, "invalid-input", str(exc))
                return
        # The record stays `queued` until a sample enters the engine (`start`).
        self.jobs[job_id] = JobInFlight(claim, record.request, record.owner, timeout=timeout,
                                        inputs=inputs)  # fmt: skip

    def refuse(self, claim: Claim, reason: str, message: str) -> None:
        """Fail a claimed job that cannot run at all (bad payload, lost inputs)."""
        log.warning("job_failed job_id=%s reason=%s: %s", claim.job.id, reason, message)
        error = JobError(type=reason, message=message)
        self.store.finish(claim.job.id, JobStatus.failed, error=error)
        self.bridge.fail(claim, reason, message)
        self.metrics.job_ended("failed", reason)

    def start(self, job: JobInFlight) -> bool:
        """Mark a job running as its first sample enters the engine; False if it ended."""
        record = self.store.start(job.job_id)
        if record is None:
            log.info("job %s skipped: canceled or expired before it started", job.job_id)
            self._forget(job)
            self.bridge.cancel(job.claim)
            return False
        job.started = time.monotonic()
        if record.queue_wait_s is not None:
            self.metrics.queue_wait.observe(record.queue_wait_s)
        request = record.request
        log.info(
            "job_started job_id=%s attempt=%d size=%dx%d steps=%d images=%d sampler=%s "
            "queue_wait_s=%.3f", job.job_id, record.attempts, request.width, request.height,
            request.steps, request.num_images, request.sampler.value, record.queue_wait_s or 0.0,
        )  # fmt: skip
        return True

    def admit(self) -> None:
        """Hand waiting samples to the engine as the batching policy allows."""
        for admission in batching.plan_admissions(self.slots(), self.settings.max_batch):
            job = self.jobs[admission.job_id]
            if job.started is None and not self.start(job):
                continue
            try:
                for index in range(admission.first, admission.first + admission.count):
                    spec = job.sample_spec(index)
                    job.active[index] = self.engine.add(spec, tag=(job.job_id, index))
            except Exception as exc:
                self._drop_from_engine(job)
                reason = classify(exc)
                log.warning("admission failed job_id=%s: %r", job.job_id, exc)
                self.end_failed(job, reason, public_message(exc, reason))
        self.touch()

    # --- stepping, retirement -------------------------------------------------------------------

    def on_sample_done(self, sample: Sample) -> None:
        """A sample finished denoising: keep it until the whole job can be decoded."""
        job_id, index = cast(tuple[str, int], sample.tag)  # the tag `admit` gave it
        job = self.jobs.get(job_id)
        if job is None or job.active.pop(index, None) is None:
            return
        job.finished[index] = sample

    def retire_complete(self) -> None:
        """Decode, encode and store every job whose samples all finished."""
        complete = [job for job in self.jobs.values() if job.complete]
        if not complete:
            return
        for job in complete:
            self._forget(job)
        self.retirer.retire(self.engine, complete)
        self.retirer.collect()
        self.metrics.record_memory(self.backend.device)
        self.touch()

    def on_step_failure(self, exc: Exception) -> None:
        """A batched step raised: rerun the members apart (bisect), fail a member that is alone."""
        reason = classify(exc)
        slots = self.slots()
        failed = [slot.job_id for slot in slots if slot.active > 0]
        log.warning("step failed reason=%s jobs=%s: %r", reason, ",".join(failed), exc)
        plan = batching.retry_plan(slots, failed, self.next_group, oom=reason == "oom")
        self.next_group += 2
        self.engine = self.backend.engine_factory()  # the old one may hold half-updated state
        if reason == "oom" and self.backend.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        for job_id in failed:
            job = self.jobs[job_id]
            if job_id in plan:
                job.restart(*plan[job_id])
            else:
                job.active.clear()
                self.end_failed(job, reason, public_message(exc, reason))
        self.touch()

    # --- progress, cancellation, timeouts -------------------------------------------------------

    def report_progress(self) -> None:
        """One round trip: write every running job's progress and learn which to stop."""
        progress = {job_id: job.progress() for job_id, job in self.jobs.items() if job.started}
        # (a claimed job that waits for room is still `queued`: `start` will see a cancel)
        try:
            stop = self.store.report_progress(progress)
        except RedisFull:  # progress is best effort; cancel flags are read again next step
            self.redis_full_until = time.monotonic() + REDIS_FULL_BACKOFF_S
            stop = set()
        stop |= {job_id for job_id in self.jobs if self.bridge.stop_requested(job_id)}
        for job_id in stop:
            job = self.jobs.get(job_id)
            if job is not None:
                self.end_canceled(job)

    def enforce_timeouts(self) -> None:
        """Fail jobs running longer than their timeout (checked between steps)."""
        now = time.monotonic()
        for job in list(self.jobs.values()):
            if job.overdue(now):
                self._drop_from_engine(job)
                self.end_failed(job, "timeout", f"job exceeded its {job.timeout:g}s timeout")

    # --- endings --------------------------------------------------------------------------------

    def end_failed(self, job: JobInFlight, reason: str, message: str) -> None:
        """Fail one job for good (record, rq, metrics)."""
        self._forget(job)
        self.retirer.fail(job, reason, message)

    def end_canceled(self, job: JobInFlight) -> None:
        """Stop a job at this step and discard its partial output."""
        step, _ = job.progress()
        self._drop_from_engine(job)
        self._forget(job)
        self.retirer.cancel(job, step)

    def hand_back_all(self) -> None:
        """Return every held job to the front of the queue (shutdown ran out of grace)."""
        for job in list(self.jobs.values()):
            self._drop_from_engine(job)
            self._forget(job)
            self.store.requeue(job.job_id)
            self.bridge.hand_back(job.claim)
            log.info("job_handed_back job_id=%s", job.job_id)

    def release_untracked(self) -> None:
        """After a Redis outage: hand back jobs rq thinks we hold but the loop lost mid-ending."""
        for job_id, claim in list(self.bridge.claims.items()):
            ending = self.retirer.writes.waiting(job_id) or self.retirer.encoding_job(job_id)
            if job_id not in self.jobs and not ending:
                log.warning("job_handed_back job_id=%s reason=redis_outage", job_id)
                self.store.requeue(job_id)
                self.bridge.hand_back(claim)

    def _drop_from_engine(self, job: JobInFlight) -> None:
        """Remove a job's still-denoising samples from the engine."""
        for sample in job.active.values():
            try:
                self.engine.remove(sample)
            except Exception:
                log.warning("engine.remove failed for %s", sample.tag, exc_info=True)
        job.active.clear()

    def _forget(self, job: JobInFlight) -> None:
        """Stop tracking a job in the batching state."""
        self.jobs.pop(job.job_id, None)
