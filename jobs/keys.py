"""Redis key names shared by the API and the workers (docs/architecture.md, "Redis layout")."""

from __future__ import annotations

PREFIX = "ldm:"
# The rq function every txt2img job names; the API enqueues it by string and never imports it.
TXT2IMG_FUNCTION = "workers.tasks.txt2img"


def queue_name(model: str) -> str:
    """rq queue name for a model (rq stores it under `rq:queue:ldm:<model>`)."""
    return f"{PREFIX}{model}"


def job(job_id: str) -> str:
    """Hash holding one job record."""
    return f"{PREFIX}job:{job_id}"


def image(job_id: str, index: int) -> str:
    """Encoded bytes of image `index` of a job."""
    return f"{PREFIX}job:{job_id}:image:{index}"


def model_tasks(model: str) -> str:
    """Comma-separated tasks a model's workers can run, written by each worker as it starts."""
    return f"{PREFIX}model:{model}:tasks"


def model_profile(model: str) -> str:
    """Hash of what a model's workers say about it for submission advice: `native_size` and, for
    a closed vocabulary, `known_words` (jobs/model_profile.py)."""
    return f"{PREFIX}model:{model}:profile"


def sampler_names() -> str:
    """Hash AUTOMATIC1111 sampler_name -> "<ours>" or "<ours> karras", written by workers from
    their sampler registry (the API imports no model code)."""
    return f"{PREFIX}sampler-names"


def a1111_latest(owner: str) -> str:
    """The owner's latest job through the A1111 dialect (its /progress and /interrupt)."""
    return f"{PREFIX}a1111-latest:{owner}"


def a1111_model(owner: str) -> str:
    """The model an owner chose with A1111's POST /sdapi/v1/options sd_model_checkpoint."""
    return f"{PREFIX}a1111-model:{owner}"


def job_input(job_id: str, name: str) -> str:
    """Uploaded bytes of an image-conditioned job's input (`init_image`, `mask_image`)."""
    return f"{PREFIX}job:{job_id}:input:{name}"


def cancel(job_id: str) -> str:
    """Flag set by the API when cancellation is requested; workers check it between steps."""
    return f"{PREFIX}job:{job_id}:cancel"


def gone(job_id: str) -> str:
    """Tombstone (value: owner) so an expired job answers 410 instead of 404."""
    return f"{PREFIX}gone:{job_id}"


def idempotency(owner: str, key: str) -> str:
    """Idempotency-Key record `{"job_id", "body_sha256"}` for one owner."""
    return f"{PREFIX}idem:{owner}:{key}"


def rate_limit(owner: str) -> str:
    """Token bucket of one API key."""
    return f"{PREFIX}ratelimit:{owner}"


def active_jobs(owner: str) -> str:
    """Sorted set of one owner's queued/running job ids (the concurrency quota, jobs/quota.py)."""
    return f"{PREFIX}active:{owner}"


def active_cost(owner: str) -> str:
    """Hash job id -> cost (pixel-steps) of the owner's queued and running jobs (jobs/quota.py)."""
    return f"{PREFIX}active-cost:{owner}"


def queue_places(model: str) -> str:
    """Sorted set of job ids holding a reserved place in a model's queue (jobs/quota.py)."""
    return f"{PREFIX}queue-places:{model}"


def webhook_outbox() -> str:
    """Sorted set webhook id -> when to try it next (jobs/outbox.py); written with the job's end."""
    return f"{PREFIX}webhooks:outbox"


def webhook_messages() -> str:
    """Hash webhook id -> the event's JSON (jobs/outbox.py OutboxMessage) until it is settled."""
    return f"{PREFIX}webhooks:messages"


def webhook_jobs() -> str:
    """Sorted set of active jobs with a webhook (score: created_at); the deliverer reconciles them
    so an expired or abandoned job's event is sent even when nobody polls it."""
    return f"{PREFIX}webhooks:jobs"


def webhook_server_secret() -> str:
    """The generated server secret the signing secrets derive from (without LDM_WEBHOOK_SECRET)."""
    return f"{PREFIX}webhooks:server-secret"


def owner_jobs(owner: str) -> str:
    """Sorted set of one owner's job ids by created_at: GET /v1/jobs (jobs/listing.py)."""
    return f"{PREFIX}jobs-of:{owner}"
