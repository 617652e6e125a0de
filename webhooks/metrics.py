"""The deliverer's Prometheus series, served on LDM_WEBHOOK_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from jobs.version import BUILD_HELP, VERSION
from jobs.webhooks import WebhookEvent

OUTCOMES = ("delivered", "failed", "refused")
RESULTS = ("2xx", "3xx", "4xx", "5xx", "timeout", "network", "dns", "refused")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class DelivererMetrics:
    """Deliveries by outcome, attempts by result, attempt latency, the outbox backlog."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        Info("ldm_build", BUILD_HELP, registry=registry).info({"version": VERSION})
        self.deliveries = Counter(
            "ldm_webhook_deliveries_total",
            "Events settled: delivered, failed (given up after retries) or refused (SSRF rule).",
            ["event", "outcome"], registry=registry,
        )  # fmt: skip
        self.attempts = Counter(
            "ldm_webhook_attempts_total", "POST attempts by result (status class or error).",
            ["result"], registry=registry,
        )  # fmt: skip
        self.latency = Histogram(
            "ldm_webhook_attempt_duration_seconds", "Seconds one POST attempt took.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.backlog = Gauge(
            "ldm_webhook_outbox_messages", "Events in the outbox (due or waiting to be retried).",
            registry=registry,
        )  # fmt: skip
        self.due = Gauge(
            "ldm_webhook_outbox_due_messages", "Events in the outbox due now.", registry=registry
        )
        for event in WebhookEvent:
            for outcome in OUTCOMES:
                self.deliveries.labels(event.value, outcome)
        for result in RESULTS:
            self.attempts.labels(result)

    def attempted(self, result: str, seconds: float) -> None:
        """Count one attempt and its duration."""
        self.attempts.labels(result).inc()
        self.latency.observe(seconds)

    def settled(self, event: str, outcome: str) -> None:
        """Count one event that left the outbox."""
        self.deliveries.labels(event, outcome).inc()
