"""Idempotency-Key claims: one job per (owner, key), as draft-ietf-httpapi-idempotency-key-header.

The first request with a key claims it atomically (SET NX) for the job it is about to create; a
repeat with the same body gets that job back, a repeat with another body is a conflict (422), a
repeat while the first has not created its job yet is in flight (409), and a repeat after the job
expired is gone (410).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from jobs import keys
from jobs.record import JobRecord
from jobs.store import JobStore

log = logging.getLogger(__name__)


class IdempotencyConflict(Exception):
    """The key was already used with a different request body."""


class IdempotencyInFlight(Exception):
    """The first request with this key has not created its job yet."""


class IdempotencyExpired(Exception):
    """The job created with this key has expired."""


def body_fingerprint(body: Mapping[str, Any]) -> str:
    """sha256 of the normalised request (defaults filled in, keys sorted)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class IdempotencyClaims:
    """Claims on Idempotency-Keys, kept for as long as the job they name can be read."""

    def __init__(self, store: JobStore, ttl: int) -> None:
        self.store = store
        self.ttl = ttl

    def claim(self, owner: str, key: str, fingerprint: str, job_id: str) -> JobRecord | None:
        """Reserve `key` for a new job `job_id` (None), or return the job an earlier request
        with this key and body created; raises when the earlier request differs or is pending."""
        claim_key = keys.idempotency(owner, key)
        claim = json.dumps({"job_id": job_id, "body_sha256": fingerprint})
        if self.store.redis.set(claim_key, claim, nx=True, ex=self.ttl):
            return None
        earlier = json.loads(self.store.redis.get(claim_key) or b"{}")
        if earlier.get("body_sha256") != fingerprint:
            raise IdempotencyConflict(key)
        record = self.store.get(earlier["job_id"])
        if record is not None and record.owner == owner:
            return self.store.reconcile(record)
        if self.store.tombstone(earlier["job_id"]) == owner:
            raise IdempotencyExpired(key)
        raise IdempotencyInFlight(key)

    def release(self, owner: str, key: str) -> None:
        """Drop a claim whose job was never created (best effort: it expires on its own)."""
        try:
            self.store.redis.delete(keys.idempotency(owner, key))
        except Exception:  # noqa: BLE001 - Redis is likely down; the claim has a TTL
            log.warning("could not release idempotency claim of %s", owner)
