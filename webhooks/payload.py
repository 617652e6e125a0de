"""The JSON body of an event: Standard Webhooks' `{type, timestamp, data}`, `data` a summary of the
job; rendered from the outbox message alone, so every attempt of one event sends the same bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from jobs.outbox import OutboxMessage
from jobs.webhooks import WebhookEvent


def job_data(message: OutboxMessage) -> dict[str, Any]:
    """What the event says about its job (paths are relative to the API's base URL)."""
    path = f"/v1/jobs/{message.job_id}"
    images = []
    if message.event is WebhookEvent.completed:
        images = [f"{path}/images/{index}" for index in range(message.num_images)]
    error = None
    if message.error_type is not None:
        error = {"type": message.error_type, "message": message.error_message or ""}
    return {
        "id": message.job_id,
        "status": message.status,
        "model": message.model,
        "task": message.task,
        "progress": {"step": message.step, "total": message.total},
        "error": error,
        "images": images,
        "links": {"self": path, "events": f"{path}/events", "images": images},
    }


def render(message: OutboxMessage) -> bytes:
    """The body bytes (compact JSON, keys in a fixed order)."""
    occurred = datetime.fromtimestamp(message.occurred_at, UTC)
    body = {
        "type": f"job.{message.event.value}",
        "timestamp": occurred.isoformat().replace("+00:00", "Z"),
        "data": job_data(message),
    }
    return json.dumps(body, separators=(",", ":")).encode()
