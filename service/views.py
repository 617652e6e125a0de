"""JSON representation of a job as the API returns it."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from jobs.record import JobError, JobRecord, JobWarning, Usage
from jobs.schema import JobStatus, ResolvedRequest
from jobs.webhooks import WebhookDelivery, WebhookEvent


class Progress(BaseModel):
    """Denoising progress: `step` of `total`."""

    step: int
    total: int


class Timings(BaseModel):
    """Seconds spent queued, sampling and decoding (null until known)."""

    queue_wait_s: float | None = None
    sampling_s: float | None = None
    decode_s: float | None = None


class Links(BaseModel):
    """Where to find this job and its outputs."""

    model_config = ConfigDict(populate_by_name=True)

    self_: str = Field(alias="self")
    events: str
    images: list[str]


class WebhookView(BaseModel):
    """The job's webhook and how delivering its final event goes (null until the job ends)."""

    url: str
    events: list[WebhookEvent]
    delivery: WebhookDelivery | None = None


class JobView(BaseModel):
    """GET /v1/jobs/{id} (and the 202 body of POST /v1/txt2img)."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    status: JobStatus
    model: str
    progress: Progress
    queue_position: int | None = Field(None, description="0 = next; only while queued")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    timings: Timings
    request: ResolvedRequest
    images: list[str] = Field(description="image URLs once succeeded")
    error: JobError | None = None
    attempts: int
    warnings: list[JobWarning] = Field(
        default_factory=list,
        description="advice computed at submission; the job runs anyway: `unknown-words` names "
        "prompt words a closed-vocabulary model (the shipped one) does not know, `size` a size "
        "far from the size the model draws best at",
    )
    usage: Usage | None = Field(
        None,
        description="tokens the job consumed (once succeeded): prompt tokens and latent "
        "positions of input and output images, as the OpenAI dialect's `usage` reports them",
    )
    webhook: WebhookView | None = Field(None, description="the request's webhook, if any")
    links: Links


class JobList(BaseModel):
    """GET /v1/jobs: a page of the caller's jobs, newest first."""

    jobs: list[JobView]
    next: str | None = Field(
        None, description="URL of the next page (same filters and limit); null after the last"
    )


def job_path(job_id: str) -> str:
    """URL path of a job."""
    return f"/v1/jobs/{job_id}"


def _time(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def webhook_view(record: JobRecord) -> WebhookView | None:
    """The record's webhook and its delivery, if it has one."""
    if record.webhook is None:
        return None
    hook = record.webhook
    return WebhookView(url=hook.url, events=hook.events, delivery=record.webhook_delivery)


def job_view(record: JobRecord, queue_position: int | None = None) -> JobView:
    """Render a record; image URLs only when the job succeeded."""
    path = job_path(record.id)
    images = []
    if record.status is JobStatus.succeeded:
        images = [f"{path}/images/{index}" for index in range(record.request.num_images)]
    return JobView(
        id=record.id,
        status=record.status,
        model=record.request.model,
        progress=Progress(step=record.progress_step, total=record.progress_total),
        queue_position=queue_position if record.status is JobStatus.queued else None,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        started_at=_time(record.started_at),
        finished_at=_time(record.finished_at),
        timings=Timings(
            queue_wait_s=record.queue_wait_s,
            sampling_s=record.sampling_s,
            decode_s=record.decode_s,
        ),
        request=record.request,
        images=images,
        error=record.error,
        attempts=record.attempts,
        warnings=record.warnings,
        usage=record.usage,
        webhook=webhook_view(record),
        links=Links.model_validate({"self": path, "events": f"{path}/events", "images": images}),
    )
