"""Job endings a full Redis refused, kept in order and retried with backoff.

At `maxmemory` with `noeviction` Redis refuses every write that could grow memory, so a job's
images, its record and rq's registries cannot be written. The worker keeps the ending and tries
again (0.5 s, doubling to 10 s) while sampling goes on; it admits no new work and reports not
ready meanwhile. Writes run in submission order: a job's registry update never precedes its
record, and a later job never ends before an earlier one that is still waiting.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from redis.exceptions import OutOfMemoryError as RedisFull

log = logging.getLogger(__name__)

Write = Callable[[], object]  # its result is ignored


class PendingWrites:
    """A FIFO of Redis writes that must happen, retried while Redis is full."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
    ) -> None:
        self.clock = clock
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.queue: deque[tuple[str, Write]] = deque()  # (job id, write)
        self.delay = first_delay
        self.next_try = 0.0

    def __len__(self) -> int:
        return len(self.queue)

    def waiting(self, job_id: str) -> bool:
        """Whether an ending of this job still waits to be written."""
        return any(owner == job_id for owner, _ in self.queue)

    def submit(self, job_id: str, write: Write) -> None:
        """Run `write` now, or after the writes already waiting (Redis full: keep it)."""
        self.queue.append((job_id, write))
        if len(self.queue) == 1:
            self.retry(force=True)

    def retry(self, force: bool = False) -> None:
        """Run waiting writes in order until one is refused again (only when due). Other Redis
        errors (an outage) propagate with the write still first in line."""
        if not self.queue or (not force and self.clock() < self.next_try):
            return
        while self.queue:
            try:
                self.queue[0][1]()
            except RedisFull:
                log.warning("redis full: %d job endings wait; retry in %.1fs",
                            len(self.queue), self.delay)  # fmt: skip
                self.next_try = self.clock() + self.delay
                self.delay = min(self.delay * 2, self.max_delay)
                return
            self.queue.popleft()
        self.delay = self.first_delay

    def seconds_to_next_try(self) -> float:
        """How long until the next retry is due (0 when nothing waits)."""
        return max(0.0, self.next_try - self.clock()) if self.queue else 0.0
