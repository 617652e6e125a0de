"""Per-owner job index: the caller's jobs, newest first, a page at a time (GET /v1/jobs).

`ldm:jobs-of:<owner>` is a sorted set of the owner's job ids scored by `created_at`, written in the
MULTI that creates the record. Entries older than a job's longest life (queue TTL, both attempts'
timeouts, rq's abandon detection, the result TTL) are pruned on each read, and an entry whose record
has expired sooner is dropped when a page meets it, so the set holds about what Redis still holds.
A page is read in chunks and bounded: a status filter that matches little reads at most
`SCAN_LIMIT` entries per request and hands back a cursor to go on from.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.client import Pipeline

from jobs import keys
from jobs.record import JobRecord
from jobs.schema import JobStatus

SCAN_LIMIT = 1000  # index entries one page may read through
CHUNK = 100  # entries read per round trip
CURSOR_PATTERN = r"^(\d{1,12}(?:\.\d{1,17})?)_([0-9a-f-]{1,64})$"  # what Cursor.encode writes
_CURSOR = re.compile(CURSOR_PATTERN)


@dataclass(frozen=True, order=True)
class Cursor:
    """Where a page ended: the last job read (its creation time and id), exclusive."""

    created_at: float
    job_id: str

    def encode(self) -> str:
        return f"{self.created_at!r}_{self.job_id}"  # repr: the score itself, to the last bit

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """ValueError unless `text` is what `encode` writes."""
        match = _CURSOR.match(text)
        if match is None:
            raise ValueError("not a cursor this server wrote (use the `next` of a page)")
        return cls(float(match.group(1)), match.group(2))


@dataclass(frozen=True)
class JobPage:
    """Records newest first, and the cursor of the next page (None: no more)."""

    records: list[JobRecord]
    next: Cursor | None


class OwnerJobs:
    """Writes and pages through the per-owner index of jobs."""

    def __init__(self, redis: Redis, lifetime_s: int) -> None:
        self.redis = redis
        self.lifetime_s = lifetime_s

    def add(self, pipe: Pipeline, record: JobRecord) -> None:
        """Index a new job on `pipe` (the MULTI that writes its record)."""
        key = keys.owner_jobs(record.owner)
        pipe.zadd(key, {record.id: record.created_at})
        pipe.expire(key, self.lifetime_s)

    def page(
        self,
        owner: str,
        *,
        limit: int,
        statuses: Collection[JobStatus] = (),
        after: Cursor | None = None,
        refresh: Callable[[JobRecord], JobRecord] = lambda record: record,
    ) -> JobPage:
        """Up to `limit` of the owner's live jobs created before `after`, newest first, whose
        status (after `refresh`, which reconciles an active record) is one of `statuses` (any
        when empty)."""
        key = keys.owner_jobs(owner)
        self.redis.zremrangebyscore(key, "-inf", f"({time.time() - self.lifetime_s}")
        found: list[JobRecord] = []
        scanned, position = 0, after
        while scanned < SCAN_LIMIT:
            entries, full = self._entries_after(key, position)
            for n, (cursor, raw) in enumerate(zip(entries, self._records(entries), strict=True)):
                scanned += 1
                position = cursor
                if not raw:  # the record expired before its index entry
                    self.redis.zrem(key, cursor.job_id)
                    record = None
                else:
                    record = refresh(JobRecord.from_hash(cursor.job_id, raw))
                if record and record.owner == owner and record.status in (statuses or JobStatus):
                    found.append(record)
                if len(found) == limit or scanned == SCAN_LIMIT:
                    more = n < len(entries) - 1 or full
                    return JobPage(found, position if more else None)
            if not full:
                return JobPage(found, None)
        return JobPage(found, position)

    def _entries_after(self, key: str, after: Cursor | None) -> tuple[list[Cursor], bool]:
        """Up to CHUNK entries below `after` in (created_at, id) order, newest first, and whether
        more may follow them."""
        top = "+inf" if after is None else repr(after.created_at)
        entries = _cursors(self.redis.zrevrangebyscore(key, top, "-inf", 0, CHUNK, True))
        full = len(entries) == CHUNK
        if after is None:
            return entries, full
        later = [entry for entry in entries if entry < after]
        if later or not full:
            return later, full
        # a whole chunk shares the cursor's time (never in practice): go on below that time
        entries = _cursors(self.redis.zrevrangebyscore(key, f"({after.created_at!r}", "-inf", 0,
                                                       CHUNK, True))  # fmt: skip
        return entries, len(entries) == CHUNK

    def _records(self, entries: list[Cursor]) -> list[dict[bytes, bytes]]:
        with self.redis.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hgetall(keys.job(entry.job_id))
            return list(pipe.execute())


def _cursors(entries: Any) -> list[Cursor]:
    """ZREVRANGEBYSCORE ... WITHSCORES as cursors."""
    return [Cursor(float(score), member.decode() if isinstance(member, bytes) else str(member))
            for member, score in entries]  # fmt: skip
