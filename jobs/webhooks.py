"""Webhooks in the job contract: the request field, its delivery state on the job record, and the
per-API-key signing secrets (Standard Webhooks `whsec_` keys) the API shows and the deliverer uses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from datetime import datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from redis import Redis

from jobs import keys

# The URLs a webhook may name, as a JSON Schema pattern (the validator applies the same rule):
# http(s), a host name or a bracketed IPv6 address, a port 1-65535, then RFC 3986 characters.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_H16 = r"[0-9A-Fa-f]{1,4}"
_IPV6 = "|".join(
    (
        rf"(?:{_H16}:){{7}}{_H16}",
        rf"(?:{_H16}:){{1,7}}:",
        rf"(?:{_H16}:){{1,6}}:{_H16}",
        rf"(?:{_H16}:){{1,5}}(?::{_H16}){{1,2}}",
        rf"(?:{_H16}:){{1,4}}(?::{_H16}){{1,3}}",
        rf"(?:{_H16}:){{1,3}}(?::{_H16}){{1,4}}",
        rf"(?:{_H16}:){{1,2}}(?::{_H16}){{1,5}}",
        rf"{_H16}:(?::{_H16}){{1,6}}",
        rf":(?:(?::{_H16}){{1,7}}|:)",
    )
)
_PORT = r"6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}"
URL_PATTERN = (
    rf"^https?://(?:{_LABEL}(?:\.{_LABEL})*|\[(?:{_IPV6})\])(?::(?:{_PORT}))?"
    r"(?:[/?#][-A-Za-z0-9._~!$&'()*+,;=:@%/?#]*)?$"
)
_URL = re.compile(URL_PATTERN)
MAX_URL_CHARS = 2048


class WebhookEvent(StrEnum):
    """What a webhook is sent for (its payload `type` is `job.<event>`)."""

    completed = "completed"  # the job succeeded
    failed = "failed"  # failed, or expired in the queue (data.status says which)
    canceled = "canceled"
    progress = "progress"  # while running, at most every LDM_WEBHOOK_PROGRESS_INTERVAL seconds


DEFAULT_EVENTS = (WebhookEvent.completed, WebhookEvent.failed)


class Webhook(BaseModel):
    """Where to POST signed notifications about a job, and for which events."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        max_length=MAX_URL_CHARS,
        strict=True,
        json_schema_extra={"pattern": URL_PATTERN},
        description="http(s) URL that receives the events; private, loopback, link-local and "
        "metadata addresses are refused unless LDM_WEBHOOK_ALLOW lists them",
    )
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list(DEFAULT_EVENTS),
        min_length=1,
        max_length=len(WebhookEvent),
        description="events to send (default: completed, failed)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not _URL.fullmatch(value):
            raise ValueError(
                "must be an http:// or https:// URL with a host name or [IPv6] address, an "
                "optional port 1-65535 and no credentials"
            )
        return value

    @field_validator("events")
    @classmethod
    def _unique(cls, value: list[WebhookEvent]) -> list[WebhookEvent]:
        return list(dict.fromkeys(value))

    @property
    def host(self) -> str:
        """The URL's host as written (IPv6 without brackets)."""
        authority = self.url.split("://", 1)[1]
        authority = re.split(r"[/?#]", authority, maxsplit=1)[0]
        if authority.startswith("["):
            return authority[1 : authority.index("]")]
        return authority.rsplit(":", 1)[0] if ":" in authority else authority


class WebhookDelivery(BaseModel):
    """Delivery of a job's final event, as GET /v1/jobs/{id} shows it."""

    state: Literal["pending", "retrying", "delivered", "failed"]
    event: WebhookEvent
    webhook_id: str | None = Field(None, description="the `webhook-id` header of every attempt")
    attempts: int = 0
    last_status: int | None = Field(None, description="HTTP status of the last attempt")
    last_error: str | None = None
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    delivered_at: datetime | None = None


SECRET_CONTEXT = b"ldm-serve webhook signing secret\x00"


class WebhookSecrets:
    """Signing secrets: HMAC-SHA256 of the owner id under the server secret (LDM_WEBHOOK_SECRET,
    or one generated once and kept in Redis), so each API key has its own and none is stored."""

    def __init__(self, redis: Redis, configured: str = "") -> None:
        self.redis = redis
        self._server = configured.encode() if configured else b""
        self._lock = threading.Lock()

    def server_key(self) -> bytes:
        """The server secret (generated in Redis on first use when none is configured)."""
        with self._lock:
            if not self._server:
                key = keys.webhook_server_secret()
                self.redis.set(key, secrets.token_urlsafe(32), nx=True)
                value = self.redis.get(key)
                if value is None:
                    raise RuntimeError(f"{key} vanished right after it was set")
                self._server = value if isinstance(value, bytes) else str(value).encode()
            return self._server

    def raw_for(self, owner: str) -> bytes:
        """The owner's 32 secret bytes."""
        return hmac.new(self.server_key(), SECRET_CONTEXT + owner.encode(), hashlib.sha256).digest()

    def for_owner(self, owner: str) -> str:
        """The owner's secret as Standard Webhooks writes it: `whsec_<base64>`."""
        return "whsec_" + base64.b64encode(self.raw_for(owner)).decode()
