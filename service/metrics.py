"""Prometheus metrics of the API (own registry; names per docs/architecture.md)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs.store import JobStore
from jobs.version import BUILD_HELP, VERSION

logger = logging.getLogger(__name__)

SUBMIT_ROUTE = "/v1/txt2img"
# problem slug -> `ldm_jobs_rejected_total{reason}`
REJECT_REASONS = {
    "validation": "validation",
    "malformed-json": "validation",
    "queue-full": "queue_full",
    "rate-limited": "rate_limited",
    "concurrency-limited": "concurrency_limited",
    "cost-limited": "cost_limited",
    "unauthorized": "unauthorized",
    "redis-unavailable": "redis_unavailable",
    "redis-full": "redis_unavailable",
    "body-too-large": "body_too_large",
    "idempotency-conflict": "idempotency_conflict",
}


class RedisGauges(Collector):
    """Gauges read from Redis at scrape time; read-only (never cleans registries)."""

    def __init__(self, store: JobStore, models: Sequence[str]) -> None:
        self.store = store
        self.models = tuple(models)

    def collect(self) -> Iterator[Metric]:
        """Queue depth, live workers, oldest queued age per model; Redis memory. Skipped whole
        (not stale, not partial) when Redis does not answer within the scrape's deadline."""
        depth = GaugeMetricFamily("ldm_queue_depth", "Jobs waiting in the queue", labels=["model"])
        alive = GaugeMetricFamily("ldm_workers_alive", "Live rq workers", labels=["model"])
        oldest = GaugeMetricFamily(
            "ldm_oldest_queued_job_age_seconds", "Age of the oldest queued job", labels=["model"]
        )
        used = GaugeMetricFamily("ldm_redis_used_memory_bytes", "Redis used_memory")
        limit = GaugeMetricFamily("ldm_redis_maxmemory_bytes", "Redis maxmemory (0 = unlimited)")
        try:
            for model in self.models:
                depth.add_metric([model], self.store.queue(model).count)
                alive.add_metric([model], self.store.fleet.live_workers(model))
                oldest.add_metric([model], self.store.fleet.oldest_queued_age(model))
            memory = self.store.redis.info("memory")
            used.add_metric([], memory.get("used_memory", 0))
            limit.add_metric([], memory.get("maxmemory", 0))
        except RedisError as exc:
            logger.warning("metrics: redis gauges skipped: %s", exc)
            return
        yield from (depth, alive, oldest, used, limit)


class ApiMetrics:
    """Counters and histograms of one API app, in their own CollectorRegistry."""

    def __init__(self, store: JobStore, models: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ldm_http_requests",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "ldm_http_request_duration_seconds",
            "HTTP request duration",
            ["route", "method"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "ldm_jobs_submitted", "Jobs accepted", ["model", "task"], registry=self.registry
        )
        self.rejected = Counter(
            "ldm_jobs_rejected", "Submissions rejected", ["reason"], registry=self.registry
        )
        Info("ldm_build", BUILD_HELP, registry=self.registry).info({"version": VERSION})
        ProcessCollector(registry=self.registry)
        self.registry.register(RedisGauges(store, models))


class MetricsMiddleware:
    """Counts every request by route template (never the raw path), method and status."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time the request and record its status once the response starts."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if scope.get("state", {}).get("reject_reason") == "request-timeout":
                status = 408  # cut off by the read deadline (service/protocol.py), not an error
            self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.requests.labels(template, method, str(status)).inc()
        self.metrics.duration.labels(template, method).observe(seconds)
        if scope["path"] == SUBMIT_ROUTE and method == "POST" and status >= 400:
            slug = scope.get("state", {}).get("reject_reason", "")
            reason = REJECT_REASONS.get(slug)
            if reason:
                self.metrics.rejected.labels(reason).inc()
