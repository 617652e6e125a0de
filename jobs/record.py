"""The job record: what `ldm:job:<id>` holds (status, timings, errors, warnings, usage), the
API's and the workers' shared view of a job once its request is resolved (jobs/schema.py)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from jobs.schema import JobStatus, ResolvedRequest
from jobs.webhooks import Webhook, WebhookDelivery


class JobError(BaseModel):
    """Why a job failed: stable `type` (error, nan, oom, timeout, abandoned) and a message."""

    type: str
    message: str


class JobWarning(BaseModel):
    """Advice given at submission about a request the model will likely answer with nonsense
    (from what its workers published: jobs/model_profile.py); the job runs anyway."""

    type: str = Field(description="stable kind: `unknown-words` or `size`")
    message: str = Field(description="what is off and what the model expects instead")


class Usage(BaseModel):
    """What a finished job consumed, in tokens as OpenAI's image API counts them: prompt tokens the
    text encoder read, and latent positions (one per f x f pixels) of input and output images."""

    text_tokens: int = Field(description="prompt (and negative prompt, when guided) tokens")
    image_tokens: int = Field(description="latent positions of the input images (image tasks)")
    output_tokens: int = Field(description="latent positions of the output images")


class JobRecord(BaseModel):
    """One job as stored in the `ldm:job:<id>` hash (times are Unix epoch seconds)."""

    id: str
    status: JobStatus
    owner: str
    request: ResolvedRequest
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress_step: int = 0
    progress_total: int = 0
    queue_wait_s: float | None = None
    sampling_s: float | None = None
    decode_s: float | None = None
    error: JobError | None = None
    attempts: int = 0
    warnings: list[JobWarning] = []
    usage: Usage | None = None  # written when the job succeeds
    webhook: Webhook | None = None
    webhook_progress_s: float | None = None  # least seconds between two progress events
    webhook_delivery: WebhookDelivery | None = None  # of the final event (the deliverer writes)

    _FLOATS: ClassVar[tuple[str, ...]] = (
        "created_at",
        "started_at",
        "finished_at",
        "queue_wait_s",
        "sampling_s",
        "decode_s",
    )

    def to_hash(self) -> dict[str, str]:
        """Flat string fields for HSET (None values are omitted)."""
        fields = {
            "status": self.status.value,
            "owner": self.owner,
            "request": self.request.model_dump_json(),
            "progress_step": str(self.progress_step),
            "progress_total": str(self.progress_total),
            "num_images": str(self.request.num_images),
            "output_format": self.request.output_format.value,
            "attempts": str(self.attempts),
        }
        for name in self._FLOATS:
            value = getattr(self, name)
            if value is not None:
                fields[name] = repr(float(value))
        if self.error is not None:
            fields["error_type"] = self.error.type
            fields["error_message"] = self.error.message
        if self.warnings:
            fields["warnings"] = json.dumps([warning.model_dump() for warning in self.warnings])
        if self.usage is not None:
            fields["usage"] = self.usage.model_dump_json()
        if self.webhook is not None:
            fields["webhook"] = self.webhook.model_dump_json()
            if self.webhook_progress_s is not None:
                fields["webhook_progress_s"] = repr(float(self.webhook_progress_s))
        return fields

    @classmethod
    def from_hash(cls, job_id: str, raw: Mapping[Any, Any]) -> JobRecord:
        """Parse an HGETALL reply."""
        data = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        delivery = data.get("webhook_delivery")
        delivery = WebhookDelivery.model_validate_json(delivery) if delivery else None
        error = None
        if "error_type" in data:
            error = JobError(type=data["error_type"], message=data.get("error_message", ""))
        return cls(
            id=job_id,
            status=JobStatus(data["status"]),
            owner=data.get("owner", ""),
            request=ResolvedRequest.model_validate_json(data["request"]),
            progress_step=int(data.get("progress_step", 0)),
            progress_total=int(data.get("progress_total", 0)),
            attempts=int(data.get("attempts", 0)),
            error=error,
            warnings=json.loads(data.get("warnings", "[]")),
            usage=Usage.model_validate_json(data["usage"]) if "usage" in data else None,
            webhook=Webhook.model_validate_json(data["webhook"]) if "webhook" in data else None,
            webhook_progress_s=float(data["webhook_progress_s"])
            if "webhook_progress_s" in data
            else None,
            webhook_delivery=delivery,
            **{name: float(data[name]) for name in cls._FLOATS if name in data},
        )
