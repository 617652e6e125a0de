"""Settings of the webhook deliverer (`ldm-serve webhooks`): env vars, each with a default."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str, field: str) -> AliasChoices:
    """The documented env var name, or the field name (keyword construction)."""
    return AliasChoices(name, field)


class DelivererSettings(BaseSettings):
    """Configuration of one deliverer process (docs/architecture.md, "Settings")."""

    model_config = SettingsConfigDict(case_sensitive=False, populate_by_name=True, extra="ignore")

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL", "redis_url")
    )
    # Must equal the API's: both derive each API key's signing secret from it (empty: a secret
    # generated once and kept in Redis, shared by every API and deliverer on that Redis).
    webhook_secret: str = Field(
        default="", repr=False, validation_alias=_env("LDM_WEBHOOK_SECRET", "webhook_secret")
    )
    # CIDRs, addresses or host names that may be reached although private, loopback, ...
    webhook_allow: str = Field(
        default="", validation_alias=_env("LDM_WEBHOOK_ALLOW", "webhook_allow")
    )
    metrics_port: int = Field(
        default=9102, ge=0, le=65535,
        validation_alias=_env("LDM_WEBHOOK_METRICS_PORT", "metrics_port"),
    )  # fmt: skip
    # Where /metrics listens: every interface (containers; Prometheus scrapes it), loopback under
    # `ldm-serve up`.
    metrics_host: str = Field(
        default="0.0.0.0", validation_alias=_env("LDM_WEBHOOK_METRICS_HOST", "metrics_host")
    )
    # One attempt's deadline (connect, send, answer), seconds.
    timeout_s: float = Field(
        default=10.0, gt=0, validation_alias=_env("LDM_WEBHOOK_TIMEOUT", "timeout_s")
    )
    # Retry n waits min(max, base * 2^(n-1)) seconds, jittered to between half and all of it;
    # an event is given up once its next try would fall after max age (progress: its own).
    retry_base_s: float = Field(
        default=5.0, gt=0, validation_alias=_env("LDM_WEBHOOK_RETRY_BASE", "retry_base_s")
    )
    retry_max_s: float = Field(
        default=600.0, gt=0, validation_alias=_env("LDM_WEBHOOK_RETRY_MAX", "retry_max_s")
    )
    max_age_s: float = Field(
        default=3600.0, gt=0, validation_alias=_env("LDM_WEBHOOK_MAX_AGE", "max_age_s")
    )
    progress_max_age_s: float = Field(
        default=60.0, gt=0,
        validation_alias=_env("LDM_WEBHOOK_PROGRESS_MAX_AGE", "progress_max_age_s"),
    )  # fmt: skip
    concurrency: int = Field(
        default=8, ge=1, le=256, validation_alias=_env("LDM_WEBHOOK_CONCURRENCY", "concurrency")
    )
    # Seconds between looks at the outbox while nothing is due.
    poll_s: float = Field(default=0.5, gt=0, validation_alias=_env("LDM_WEBHOOK_POLL", "poll_s"))
    # Seconds between reconciling active jobs that have a webhook (expired or abandoned ones
    # get their `failed` event even when nobody polls them).
    sweep_interval_s: float = Field(
        default=30.0, gt=0,
        validation_alias=_env("LDM_WEBHOOK_SWEEP_INTERVAL", "sweep_interval_s"),
    )  # fmt: skip
    # The API's, for reconciling (the TTLs a job gets when it ends).
    result_ttl: int = Field(
        default=3600, ge=1, validation_alias=_env("LDM_RESULT_TTL", "result_ttl")
    )
    job_timeout: int = Field(
        default=600, ge=1, validation_alias=_env("LDM_JOB_TIMEOUT", "job_timeout")
    )
    queue_ttl: int = Field(default=3600, ge=1, validation_alias=_env("LDM_QUEUE_TTL", "queue_ttl"))
    log_level: str = Field(default="INFO", validation_alias=_env("LDM_LOG_LEVEL", "log_level"))

    @property
    def lease_s(self) -> float:
        """How long a claimed event is hidden from other claims: past any attempt's deadline."""
        return self.timeout_s * 2 + 10
