"""`ldm-serve worker`: load the model once, register with rq, run the batching loop, exit right.

Exit codes: 0 after a graceful stop; 1 when the loop gives up (Redis gone, unexpected error);
70 from the watchdog when busy without step progress. Anything non-zero is restarted by
`restart: unless-stopped`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.model_profile import ModelProfile, publish_profile
from jobs.schema import UPSCALE_FACTOR
from jobs.store import JobStore
from workers.backend import Backend
from workers.loop import BatchLoop
from workers.metrics import WorkerMetrics, serve
from workers.rq_bridge import Heartbeat, RqBridge
from workers.settings import WorkerSettings
from workers.watchdog import Watchdog

if TYPE_CHECKING:
    from model.pipeline import Pipeline

log = logging.getLogger(__name__)

BackendFactory = Callable[[WorkerSettings], Backend]
T = TypeVar("T")
EXIT_NO_MODEL = 2  # the model path holds no loadable model: a configuration error, as argparse's 2


def model_backend(settings: WorkerSettings) -> Backend:
    """Load the pipeline once; engines over it are the production backend."""
    from model.devices import resolve_device, resolve_dtype
    from model.engine import BatchEngine
    from model.pipeline import load_pipeline
    from model.vocabulary import known_words

    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    pipe = load_pipeline(settings.model, device=device, dtype=resolve_dtype(settings.dtype, device))
    # An inpainting UNet (mask and masked-image channels, LDM Sec. 3.3) only inpaints; an
    # upscaler only upscales, and the API's upscale task is x4 (jobs.schema.UPSCALE_FACTOR).
    tasks = pipe.tasks
    if pipe.upscaler is not None and pipe.downsampling_factor != UPSCALE_FACTOR:
        raise ValueError(
            f"{settings.model}: a x{pipe.downsampling_factor} upscaler; the service serves x4"
        )
    compiled = compile_for_serving(pipe, settings)
    words = known_words(pipe.components.tokenizer)
    embedder = pipe.components.class_embedder
    names = None
    if embedder is not None:  # every class has an entry: its index bounds the API's check
        config = embedder.config
        names = config.class_names or ("",) * config.labels
    native = pipe.native_size if "sample" in tasks else None
    return Backend(lambda: BatchEngine(pipe), device, compiled, tasks, known_words=words,
                   native_size=native, class_names=names)  # fmt: skip


def compile_for_serving(pipe: Pipeline, settings: WorkerSettings) -> float:
    """Compile (LDM_COMPILE) and warm every batch bucket up at the default size, before the
    worker registers and so before /readyz counts it; returns the seconds it took."""
    from model.compiled import persist_cache, should_compile

    if not should_compile(settings.compile, pipe.device):
        return 0.0
    cache = Path(settings.compile_cache or Path.home() / ".cache" / "ldm-serve" / "inductor")
    persist_cache(cache)
    started = time.monotonic()
    pipe.compile()
    pipe.warm_up(settings.default_size, settings.default_size, settings.max_batch)
    seconds = time.monotonic() - started
    log.info("compiled device=%s seconds=%.1f cache=%s", pipe.device, seconds, cache)
    return seconds


def a1111_sampler_names() -> dict[str, str]:
    """A1111's sampler_name for each registry entry, plain and Karras, -> ours (for the API's
    /sdapi/v1 dialect, which imports no model code)."""
    from model.sampling.registry import SAMPLERS

    names = {}
    for entry in SAMPLERS.values():
        names[entry.a1111_name(False)] = entry.name
        names[entry.a1111_name(True)] = f"{entry.name} karras"
    return names


def connect_redis(settings: WorkerSettings) -> Redis:
    """A client that never blocks forever: a frozen Redis surfaces as a timeout (an outage)."""
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=5,
        socket_timeout=settings.idle_poll_seconds + 10,  # longer than the idle BLMOVE wait
        health_check_interval=30,
    )


def until_redis_answers(action: Callable[[], T], window_s: float) -> T | None:
    """Run a startup step, retrying each second while Redis is away for at most `window_s`
    (LDM_REDIS_RETRY_SECONDS, as the loop does); None, logged, once the window has passed."""
    started = time.monotonic()
    while True:
        try:
            return action()
        except (RedisConnectionError, RedisTimeoutError) as exc:
            if time.monotonic() - started > window_s:
                log.error("gave up waiting for redis after %.0fs at startup: %s", window_s, exc)
                return None
            log.warning("redis unavailable at startup (%s); retrying", exc)
            time.sleep(1.0)


def configure_logging(level: str) -> None:
    """One line per event: time, level, logger, key=value message."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s",
    )


def run_worker(settings: WorkerSettings, backend_factory: BackendFactory = model_backend) -> int:
    """Run one worker process to completion and return its exit code."""
    metrics = WorkerMetrics(settings.model_name)
    metrics.max_batch.set(settings.max_batch)
    serve(settings.metrics_port, settings.metrics_host)
    from model.checkpoint.files import CheckpointError

    started = time.monotonic()
    try:
        backend = backend_factory(settings)
    except CheckpointError as error:  # no restart loads a path that holds no model: say so once
        log.error("model_load_failed path=%s error=%s", settings.model, error)
        return EXIT_NO_MODEL
    metrics.model_load.set(time.monotonic() - started - backend.compile_seconds)
    metrics.compile_seconds.set(backend.compile_seconds)
    log.info(
        "model_loaded model=%s path=%s device=%s seconds=%.3f max_batch=%d",
        settings.model_name, settings.model, backend.device, time.monotonic() - started,
        settings.max_batch,
    )  # fmt: skip

    connection = connect_redis(settings)
    store = JobStore(
        connection, result_ttl=settings.result_ttl, job_timeout=int(settings.job_timeout)
    )
    # The API's submission advice (jobs/model_profile.py): LDM_DEFAULT_SIZE is the size this
    # deployment serves the model at (64 for the shipped model, 512 for SD 1.x); the paper's
    # models without text say their own (the UNet's training size), which /v1/sample defaults to.
    native = backend.native_size or settings.default_size
    profile = ModelProfile(native, backend.known_words, backend.class_names)
    made: list[RqBridge] = []  # one bridge across retries: it is born in rq once

    def announce() -> RqBridge:
        if not made:  # rq names its Redis client here: Redis must answer
            made.append(RqBridge(connection, settings.queue_name, name=settings.worker_name,
                                 heartbeat_ttl=settings.heartbeat_ttl,
                                 maintenance_interval=settings.maintenance_interval,
                                 result_ttl=settings.result_ttl))  # fmt: skip
            made[0].on_abandoned = abandoned_hook(store, metrics)
        store.fleet.publish_tasks(settings.model_name, backend.tasks)
        publish_profile(connection, settings.model_name, profile)
        store.fleet.publish_sampler_names(a1111_sampler_names())
        made[0].register()
        return made[0]

    bridge = until_redis_answers(announce, settings.redis_retry_seconds)
    if bridge is None:
        return 1
    loop_ref: list[BatchLoop] = []
    watchdog = Watchdog(
        settings.watchdog_seconds, busy=lambda: bool(loop_ref and loop_ref[0].busy())
    )
    loop = BatchLoop(settings, backend, bridge, store, metrics, touch=watchdog.touch)
    loop_ref.append(loop)
    loop.install_signal_handlers()
    heartbeat = Heartbeat(bridge, settings.heartbeat_interval)
    heartbeat.start()
    watchdog.start()
    code = 1
    try:
        code = loop.serve()
    except Exception:
        log.exception("worker loop gave up")
        try:
            loop.hand_back_all()
        except Exception:
            log.exception("could not hand running jobs back; rq cleanup will requeue them")
    finally:
        watchdog.stop()
        heartbeat.stop()
        try:
            bridge.unregister()
        except Exception:
            log.warning("could not register worker death", exc_info=True)
        metrics.record_memory(backend.device)
    log.info("worker exiting with code %d", code)
    return code


def abandoned_hook(store: JobStore, metrics: WorkerMetrics) -> Callable[[str, bool], None]:
    """Keep our record in step when rq's cleanup requeues or fails a dead worker's job."""
    from jobs.record import JobError
    from jobs.schema import JobStatus

    def on_abandoned(job_id: str, requeued: bool) -> None:
        if requeued:
            store.requeue(job_id)
            log.warning("job_requeued job_id=%s reason=abandoned", job_id)
            return
        error = JobError(type="abandoned", message="the worker running this job stopped")
        store.finish(job_id, JobStatus.failed, error=error)
        metrics.job_ended("failed", "abandoned")
        log.warning("job_failed job_id=%s reason=abandoned", job_id)

    return on_abandoned
