"""Typed settings of one batching worker process; every knob has an env var and a default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs import keys


class WorkerSettings(BaseSettings):
    """Configuration of `ldm-serve worker`, read from `LDM_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="LDM_", populate_by_name=True, extra="ignore")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    model: str = "models/default"
    model_name: str = "default"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_batch: int = Field(default=8, ge=1, le=256)
    job_timeout: float = Field(default=600.0, gt=0)
    result_ttl: int = Field(default=3600, ge=1)
    metrics_port: int = Field(default=9101, ge=0, le=65535)  # 0 disables the metrics endpoint
    # Every interface, so Prometheus reaches a container's worker; `ldm-serve up` binds loopback.
    metrics_host: str = "0.0.0.0"
    worker_name: str | None = None
    # Liveness bookkeeping. A dead worker's jobs are requeued (or failed 'abandoned') after at most
    # heartbeat_ttl + maintenance_interval seconds, by whichever worker runs maintenance next.
    heartbeat_ttl: int = Field(default=60, ge=2)
    heartbeat_interval: float = Field(default=0.0, ge=0)  # 0 means heartbeat_ttl / 4
    maintenance_interval: int = Field(default=60, ge=1)
    idle_poll_seconds: int = Field(
        default=1, ge=1
    )  # BLMOVE timeout while idle; bounds SIGTERM latency
    watchdog_seconds: float = Field(
        default=300.0, gt=0
    )  # exit non-zero if busy without step progress
    shutdown_grace: float = Field(default=60.0, ge=0)  # SIGTERM: finish running work for this long
    redis_retry_seconds: float = Field(
        default=30.0, ge=0
    )  # then exit non-zero and let restart handle it
    log_level: str = "INFO"
    # Compiled sampling (model/compiled.py): auto = CUDA graphs on a GPU, eager on the CPU, where
    # inductor wins per step but compiles for minutes (docs/benchmarks.md); on = compile anyway.
    compile: Literal["auto", "off", "on"] = "auto"
    # Inductor's kernel cache, kept across restarts ("" = ~/.cache/ldm-serve/inductor).
    compile_cache: str = ""
    # Warm-up compiles or captures requests of this side (px) before the worker takes jobs; the
    # API's default size (`ldm-serve up` sets 64 for the shipped model).
    default_size: int = Field(default=512, ge=8, le=4096)
    # Intra-op CPU threads for torch; 0 keeps torch's default (all cores). On hosts that share CPUs
    # with other processes, fewer threads avoid OpenMP spin-waiting (see docs/benchmarks.md).
    torch_threads: int = Field(default=0, ge=0, le=1024)

    @model_validator(mode="after")
    def _derive_heartbeat_interval(self) -> WorkerSettings:
        """Heartbeat several times per TTL so one late beat never looks like death."""
        if self.heartbeat_interval <= 0 or self.heartbeat_interval >= self.heartbeat_ttl:
            self.heartbeat_interval = self.heartbeat_ttl / 4
        return self

    @property
    def queue_name(self) -> str:
        """The one rq queue this worker listens on: `ldm:<model name>`."""
        return keys.queue_name(self.model_name)
