"""Worker metrics exactly as named in docs/architecture.md, served on LDM_METRICS_PORT."""

from __future__ import annotations

import logging
import resource
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client import start_http_server as _start_http_server

from jobs.version import BUILD_HELP, VERSION

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
OUTCOMES = ("succeeded", "failed", "canceled")
FAILURE_REASONS = (
    "error", "nan", "oom", "timeout", "abandoned", "invalid-payload", "invalid-input",
)  # fmt: skip


class WorkerMetrics:
    """The worker's Prometheus series, bound to one model label."""

    def __init__(self, model: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.model = model
        labels = ["model"]
        Info("ldm_build", BUILD_HELP, registry=registry).info({"version": VERSION})
        self._jobs = Counter(
            "ldm_worker_jobs_total", "Jobs ended by this worker.", [*labels, "outcome"],
            registry=registry,
        )  # fmt: skip
        self._failures = Counter(
            "ldm_worker_job_failures_total", "Failed jobs by reason.", [*labels, "reason"],
            registry=registry,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "ldm_worker_queue_wait_seconds", "Seconds from submission to start.", labels,
            buckets=WAIT_BUCKETS, registry=registry,
        ).labels(model)  # fmt: skip
        self.job_duration = Histogram(
            "ldm_worker_job_duration_seconds", "Seconds from start to end of a job.", labels,
            buckets=DURATION_BUCKETS, registry=registry,
        ).labels(model)  # fmt: skip
        self.batch_size = Histogram(
            "ldm_worker_batch_size", "Samples per batched UNet forward.", labels,
            buckets=BATCH_BUCKETS, registry=registry,
        ).labels(model)  # fmt: skip
        self.denoising_steps = Counter(
            "ldm_worker_denoising_steps_total",
            "Denoiser evaluations, one per sample per batched forward (a Heun step is two).",
            labels,
            registry=registry,
        ).labels(model)
        self._images = Counter(
            "ldm_worker_images_generated_total", "Images stored, by task.", [*labels, "task"],
            registry=registry,
        )  # fmt: skip
        self.running_samples = Gauge(
            "ldm_worker_running_samples", "Samples in the running batch.", labels, registry=registry
        ).labels(model)
        self.max_batch = Gauge(
            "ldm_worker_max_batch", "Configured batch capacity (samples).", labels,
            registry=registry,
        ).labels(model)  # fmt: skip
        self.ready = Gauge(
            "ldm_worker_ready",
            "1 while Redis takes this worker's writes; 0 while job endings wait on a full Redis.",
            labels,
            registry=registry,
        ).labels(model)
        self.ready.set(1)
        self.model_load = Gauge(
            "ldm_worker_model_load_seconds", "Seconds the model took to load.", labels,
            registry=registry,
        ).labels(model)  # fmt: skip
        self.compile_seconds = Gauge(
            "ldm_worker_compile_seconds",
            "Seconds spent compiling and capturing the model before the worker took jobs "
            "(0: eager).", labels, registry=registry,
        ).labels(model)  # fmt: skip
        self._memory = Gauge(
            "ldm_worker_device_memory_bytes", "Device memory in use.", [*labels, "device"],
            registry=registry,
        )  # fmt: skip
        self._memory_peak = Gauge(
            "ldm_worker_device_memory_peak_bytes", "Peak device memory.", [*labels, "device"],
            registry=registry,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self._jobs.labels(model, outcome)
        for reason in FAILURE_REASONS:
            self._failures.labels(model, reason)

    def job_ended(self, outcome: str, reason: str | None = None) -> None:
        """Count one job outcome (and its failure reason)."""
        self._jobs.labels(self.model, outcome).inc()
        if outcome == "failed":
            reason = reason if reason in FAILURE_REASONS else "error"
            self._failures.labels(self.model, reason).inc()

    def images_stored(self, task: str, count: int) -> None:
        """Count stored images of one task (txt2img, img2img, inpaint)."""
        self._images.labels(self.model, task).inc(count)

    def record_memory(self, device: str) -> None:
        """Sample device memory: CUDA allocator stats, or process RSS on CPU."""
        in_use, peak = device_memory(device)
        self._memory.labels(self.model, device).set(in_use)
        self._memory_peak.labels(self.model, device).set(peak)


def device_memory(device: str) -> tuple[int, int]:
    """(bytes in use, peak bytes) for a torch device string."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.memory_allocated(device), torch.cuda.max_memory_allocated(device)
    with open("/proc/self/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_pages * resource.getpagesize(), peak_kib * 1024


def serve(port: int, host: str = "0.0.0.0") -> Any:
    """Expose the default registry (with process_* collectors) on host:port; port 0 = disabled."""
    if port == 0:
        return None
    server = _start_http_server(port, addr=host)
    shown = f"[{host}]" if ":" in host else host
    log.info("metrics on http://%s:%d/metrics", shown, port)
    return server
