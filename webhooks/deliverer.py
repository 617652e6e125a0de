"""The deliverer loop: claim due events, POST them signed on a thread pool, settle or reschedule;
reconcile active jobs with a webhook now and then; SIGTERM drains the attempts under way.

Not the GPU worker: a slow or dead receiver only ever holds this process's threads.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from types import FrameType

from prometheus_client import start_http_server
from redis import Redis
from redis.exceptions import RedisError

from jobs.destinations import DestinationPolicy
from jobs.outbox import Outbox, OutboxMessage
from jobs.store import JobStore
from jobs.webhooks import WebhookDelivery, WebhookEvent, WebhookSecrets
from webhooks.metrics import DelivererMetrics
from webhooks.payload import render
from webhooks.settings import DelivererSettings
from webhooks.signing import signed_headers
from webhooks.transport import Attempt, Transport

log = logging.getLogger(__name__)
SWEEP_BATCH = 1000  # jobs reconciled per sweep, oldest first
GAUGE_INTERVAL_S = 1.0


def retry_delay(attempts: int, base_s: float, max_s: float, draw: Callable[[], float]) -> float:
    """Seconds before retry number `attempts` (1 = the first retry): exponential, capped, and
    jittered to between half and all of it so receivers coming back are not hit in lockstep."""
    delay = min(max_s, base_s * 2.0 ** min(attempts - 1, 62))
    return delay / 2 + draw() * delay / 2


def _time(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class Deliverer:
    """Delivers the outbox until stopped; `serve()` returns the exit code."""

    def __init__(
        self,
        settings: DelivererSettings,
        redis: Redis,
        metrics: DelivererMetrics,
        transport: Transport | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = Outbox(redis)
        self.store = JobStore(
            redis,
            result_ttl=settings.result_ttl,
            job_timeout=settings.job_timeout,
            queue_ttl=settings.queue_ttl,
        )
        self.secrets = WebhookSecrets(redis, settings.webhook_secret)
        self.metrics = metrics
        policy = DestinationPolicy.parse(settings.webhook_allow)
        self.transport = transport or Transport(policy, settings.timeout_s)
        self.pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="deliver")
        self.in_flight: set[Future[None]] = set()
        self.random = random.Random()
        self.stopping = False
        self.next_sweep = 0.0
        self.next_gauges = 0.0

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: claim nothing more, finish the attempts under way, exit 0."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: finishing %d attempts", signal.Signals(signum).name, len(self.in_flight))
        self.stopping = True

    def serve(self) -> int:
        """Loop until stopped; Redis outages are waited out (events wait in Redis meanwhile)."""
        log.info("webhook deliverer started: concurrency=%d", self.settings.concurrency)
        while not self.stopping:
            try:
                self.iterate()
            except RedisError as exc:
                log.warning("redis unavailable (%s); retrying", exc)
                time.sleep(1.0)
        wait(self.in_flight, timeout=self.settings.timeout_s + 5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        log.info("webhook deliverer stopped")
        return 0

    def iterate(self) -> None:
        """One round: reconcile if due, refresh the gauges, claim what there is room for."""
        self._reap()
        now = time.monotonic()
        if now >= self.next_sweep:
            self.next_sweep = now + self.settings.sweep_interval_s
            self.sweep()
        if now >= self.next_gauges:
            self.next_gauges = now + GAUGE_INTERVAL_S
            waiting, due = self.outbox.backlog()
            self.metrics.backlog.set(waiting)
            self.metrics.due.set(due)
        room = self.settings.concurrency - len(self.in_flight)
        claimed = self.outbox.claim(room, self.settings.lease_s) if room > 0 else None
        if claimed is not None:
            for broken in claimed.broken:
                log.warning("outbox entry %s has no readable message; dropped", broken)
                self.outbox.settle(broken, "", None)
            for message in claimed.messages:
                future = self.pool.submit(self.deliver, message, claimed.now, time.monotonic())
                self.in_flight.add(future)
            if claimed.messages:
                return
        if self.in_flight:
            wait(self.in_flight, timeout=self.settings.poll_s, return_when=FIRST_COMPLETED)
        else:
            time.sleep(self.settings.poll_s)

    def _reap(self) -> None:
        for future in [f for f in self.in_flight if f.done()]:
            self.in_flight.discard(future)
            if future.exception() is not None:  # the lease runs out; the event is retried
                log.warning("delivery failed unexpectedly: %r", future.exception())

    def sweep(self) -> None:
        """Reconcile active jobs with a webhook: an expired or abandoned job ends (and its
        event enters the outbox) even when nobody reads it; ended or vanished ones are dropped."""
        ended = []
        for job_id in self.outbox.watched(SWEEP_BATCH):
            record = self.store.get(job_id)
            if record is None or record.status.terminal:
                ended.append(job_id)
            elif self.store.reconcile(record).status.terminal:
                log.info("job %s ended while reconciled (its event is queued)", job_id)
        self.outbox.unwatch(ended)

    def deliver(self, message: OutboxMessage, claimed_at: float, claimed_mono: float) -> None:
        """Sign and POST one event, then settle it or schedule its next try."""
        body = render(message)
        key = self.secrets.raw_for(message.owner)
        headers = signed_headers(key, message.id, int(time.time()), body)
        started = time.monotonic()
        attempt = self.transport.post(message.url, body, headers)
        self.metrics.attempted(attempt.result, time.monotonic() - started)
        now = claimed_at + (time.monotonic() - claimed_mono)  # Redis's clock, approximately
        attempts = message.attempts + 1
        if attempt.ok or attempt.refused:
            self._settle(message, attempt, attempts, now)
            return
        final = message.event is not WebhookEvent.progress
        max_age = self.settings.max_age_s if final else self.settings.progress_max_age_s
        delay = retry_delay(attempts, self.settings.retry_base_s, self.settings.retry_max_s,
                            self.random.random)  # fmt: skip
        if now + delay > message.enqueued_at + max_age:
            self._settle(message, attempt, attempts, now)
            return
        state = self._state(message, "retrying", attempt, attempts, now, next_at=now + delay)
        self.outbox.retry(message.model_copy(update={"attempts": attempts}), delay, state)
        log.info(
            "webhook_retry id=%s job_id=%s attempt=%d result=%s error=%s next_in=%.1fs",
            message.id, message.job_id, attempts, attempt.result, attempt.error, delay,
        )  # fmt: skip

    def _settle(self, message: OutboxMessage, attempt: Attempt, attempts: int, now: float) -> None:
        """The event leaves the outbox: delivered, refused, or given up."""
        outcome = "delivered" if attempt.ok else "refused" if attempt.refused else "failed"
        state = self._state(message, "delivered" if attempt.ok else "failed", attempt, attempts,
                            now)  # fmt: skip
        self.outbox.settle(message.id, message.job_id, state)
        self.metrics.settled(message.event.value, outcome)
        level = logging.INFO if attempt.ok else logging.WARNING
        log.log(level, "webhook_%s id=%s job_id=%s attempts=%d status=%s error=%s", outcome,
                message.id, message.job_id, attempts, attempt.status, attempt.error)  # fmt: skip

    @staticmethod
    def _state(
        message: OutboxMessage,
        state: str,
        attempt: Attempt,
        attempts: int,
        now: float,
        next_at: float | None = None,
    ) -> WebhookDelivery | None:
        """The job's delivery state (final events only; progress shows in metrics and logs)."""
        if message.event is WebhookEvent.progress:
            return None
        return WebhookDelivery.model_validate({
            "state": state, "event": message.event, "webhook_id": message.id,
            "attempts": attempts, "last_status": attempt.status, "last_error": attempt.error,
            "last_attempt_at": _time(now), "next_attempt_at": _time(next_at) if next_at else None,
            "delivered_at": _time(now) if attempt.ok else None,
        })  # fmt: skip


def run(settings: DelivererSettings) -> int:
    """The `ldm-serve webhooks` process: logging, metrics endpoint, Redis, the loop."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5,
                           health_check_interval=30)  # fmt: skip
    deliverer = Deliverer(settings, redis, DelivererMetrics())
    deliverer.install_signal_handlers()  # before the port opens: a probe's SIGTERM then drains
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    return deliverer.serve()
