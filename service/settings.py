"""API process settings: every knob is an environment variable with a default."""

from __future__ import annotations

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.schema import DEFAULT_LIMITS, Limits


def _env(name: str) -> AliasChoices:
    """Accept the documented env var name and the field name (for keyword construction)."""
    return AliasChoices(name, name.lower().removeprefix("ldm_"))


class ApiSettings(BaseSettings):
    """Settings of the HTTP API (docs/architecture.md, "Settings")."""

    model_config = SettingsConfigDict(
        case_sensitive=False, populate_by_name=True, protected_namespaces=(), extra="ignore"
    )

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"))
    model_name: str = Field(default="default", validation_alias=_env("LDM_MODEL_NAME"))
    api_keys: str = Field(default="", validation_alias=_env("LDM_API_KEYS"), repr=False)
    result_ttl: int = Field(default=3600, ge=1, validation_alias=_env("LDM_RESULT_TTL"))
    job_timeout: int = Field(default=600, ge=1, validation_alias=_env("LDM_JOB_TIMEOUT"))
    queue_ttl: int = Field(default=3600, ge=1, validation_alias=_env("LDM_QUEUE_TTL"))
    max_queue: int = Field(default=1000, ge=1, validation_alias=_env("LDM_MAX_QUEUE"))
    max_pixels: int = Field(
        default=1024 * 1024, ge=64 * 64, validation_alias=_env("LDM_MAX_PIXELS")
    )
    max_size: int = Field(default=2048, ge=64, validation_alias=_env("LDM_MAX_SIZE"))
    min_size: int = Field(default=64, ge=8, validation_alias=_env("LDM_MIN_SIZE"))
    default_size: int = Field(default=512, ge=8, validation_alias=_env("LDM_DEFAULT_SIZE"))
    # guidance_scale of requests that omit it; `ldm-serve up` sets the shipped model's own (3).
    default_guidance: float = Field(
        default=7.5,
        ge=0.0,
        le=DEFAULT_LIMITS.max_guidance_scale,
        validation_alias=_env("LDM_DEFAULT_GUIDANCE"),
    )
    max_steps: int = Field(default=150, ge=1, validation_alias=_env("LDM_MAX_STEPS"))
    max_images: int = Field(default=4, ge=1, validation_alias=_env("LDM_MAX_IMAGES"))
    max_prompt_chars: int = Field(default=2000, ge=1, validation_alias=_env("LDM_MAX_PROMPT_CHARS"))
    rate_limit: int = Field(default=600, ge=0, validation_alias=_env("LDM_RATE_LIMIT"))  # 0 = off
    # Jobs one API key may have queued or running at once (429 above; 0 = off). Not applied when
    # LDM_API_KEYS is empty: all callers are then one anonymous owner, capped by LDM_MAX_QUEUE.
    max_active_jobs_per_key: int = Field(
        default=32, ge=0, validation_alias=_env("LDM_MAX_ACTIVE_JOBS_PER_KEY")
    )
    # Cost in pixel-steps (width x height x steps x images): the most one request may ask for
    # (422 above), and the most one API key may have queued or running at once (429 above; 0 =
    # off; like the job quota, not applied without API keys).
    max_cost: int = Field(
        default=DEFAULT_LIMITS.max_cost, ge=64 * 64, validation_alias=_env("LDM_MAX_COST")
    )
    max_cost_per_key: int = Field(
        default=4 * DEFAULT_LIMITS.max_cost, ge=0, validation_alias=_env("LDM_MAX_COST_PER_KEY")
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, validation_alias=_env("LDM_MAX_BODY_BYTES")
    )
    # POST /v1/img2img and /v1/inpaint carry images (base64 in JSON grows them by a third).
    max_image_body_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, validation_alias=_env("LDM_MAX_IMAGE_BODY_BYTES")
    )
    # The OpenAI Images API answers synchronously: how long a request waits for its job (then 504).
    sync_timeout_s: float = Field(default=300.0, gt=0, validation_alias=_env("LDM_SYNC_TIMEOUT"))
    retry_after_s: int = Field(default=5, ge=1, validation_alias=_env("LDM_RETRY_AFTER"))
    # A frozen or unreachable Redis: a request's Redis calls must have answered within the
    # deadline of its arrival (else 503), one call waits at most the timeout, and after a timeout
    # or connection error every call fails at once for the cooldown before one probes again.
    redis_deadline_s: float = Field(default=2.0, gt=0, validation_alias=_env("LDM_REDIS_DEADLINE"))
    redis_timeout_s: float = Field(default=1.0, gt=0, validation_alias=_env("LDM_REDIS_TIMEOUT"))
    redis_cooldown_s: float = Field(default=1.0, gt=0, validation_alias=_env("LDM_REDIS_COOLDOWN"))
    # Slow clients: a request's headers and body must have arrived this many seconds after its
    # first byte (or after the connection opened); else 408 and the connection is closed.
    request_read_timeout_s: float = Field(
        default=10.0, gt=0, validation_alias=_env("LDM_REQUEST_READ_TIMEOUT")
    )
    # Webhooks (docs/api.md): destinations allowed although private, loopback, link-local, ...
    # (comma-separated CIDRs, addresses, host names); the server secret each API key's signing
    # secret derives from (empty: one generated once in Redis; the deliverer must see the same);
    # the least seconds between two progress events of one job.
    webhook_allow: str = Field(default="", validation_alias=_env("LDM_WEBHOOK_ALLOW"))
    webhook_secret: str = Field(default="", repr=False, validation_alias=_env("LDM_WEBHOOK_SECRET"))
    webhook_progress_interval_s: float = Field(
        default=2.0, ge=0.05, validation_alias=_env("LDM_WEBHOOK_PROGRESS_INTERVAL")
    )
    # Loopback unless told otherwise (containers set 0.0.0.0): no open port by accident.
    api_host: str = Field(default="127.0.0.1", validation_alias=_env("LDM_API_HOST"))
    api_port: int = Field(default=8000, ge=1, le=65535, validation_alias=_env("LDM_API_PORT"))
    # Browser apps on other origins (comma-separated, e.g. https://app.example.com; * for any):
    # none by default, so only the playground, served from this origin, calls the API.
    cors_origins: str = Field(default="", validation_alias=_env("LDM_CORS_ORIGINS"))

    @property
    def cors_allowed(self) -> tuple[str, ...]:
        """Origins allowed to call the API from a browser (empty: same origin only)."""
        return tuple(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @property
    def keys(self) -> tuple[str, ...]:
        """Configured API keys (empty: authentication off)."""
        return tuple(key.strip() for key in self.api_keys.split(",") if key.strip())

    @property
    def active_job_limit(self) -> int:
        """Per-owner concurrency quota: LDM_MAX_ACTIVE_JOBS_PER_KEY with API keys on, else 0."""
        return self.max_active_jobs_per_key if self.keys else 0

    @property
    def cost_budget(self) -> int:
        """Per-owner in-flight cost budget: LDM_MAX_COST_PER_KEY with API keys on, else 0."""
        return self.max_cost_per_key if self.keys else 0

    @property
    def models(self) -> tuple[str, ...]:
        """Model names this API accepts (each served by its own rq queue)."""
        return (self.model_name,)

    @property
    def limits(self) -> Limits:
        """Generation bounds for request validation."""
        return Limits(
            max_prompt_chars=self.max_prompt_chars,
            min_size=self.min_size,
            max_size=self.max_size,
            max_pixels=self.max_pixels,
            max_steps=self.max_steps,
            max_images=self.max_images,
            default_size=self.default_size,
            default_guidance=self.default_guidance,
            max_cost=self.max_cost,
        )
