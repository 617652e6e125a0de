"""The webhook outbox in Redis: events written with the job's change (jobs/record_scripts.py),
claimed under a lease by deliverers, settled once delivered or given up, or put back for later.

`ldm:webhooks:outbox` (sorted set) scores each webhook id with when to try it next; the event's
JSON stays in `ldm:webhooks:messages` until settled. A claim pushes the score a lease ahead, so a
deliverer that dies mid-attempt (kill -9) leaves the event due again once the lease runs out: at
least once, with the same webhook id on every attempt. Times are Redis server time throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel
from redis import Redis

from jobs import keys
from jobs.webhooks import WebhookDelivery, WebhookEvent

# KEYS: outbox, messages. ARGV: most to claim, lease seconds. Returns now, then id, message pairs.
CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {string.format('%.6f', now)}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], string.format('%.6f', now + tonumber(ARGV[2])), id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"""

# KEYS: outbox, messages, job hash. ARGV: id, retry delay in seconds ('' = settled: remove),
# the message to keep ('' = unchanged), the job's delivery state ('' = none). A retry of an event
# settled meanwhile (another deliverer after a lease ran out) is dropped.
SETTLE = """
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
  local t = redis.call('TIME')
  local due = tonumber(t[1]) + tonumber(t[2]) / 1000000 + tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], string.format('%.6f', due), ARGV[1])
  if ARGV[3] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[3]) end
end
if ARGV[4] ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HSET', KEYS[3], 'webhook_delivery', ARGV[4])
end
return 1
"""


class OutboxMessage(BaseModel):
    """One event waiting for delivery, as the record scripts wrote it (plus attempts so far)."""

    id: str  # the webhook-id header of every attempt
    job_id: str
    event: WebhookEvent
    url: str
    owner: str
    status: str
    model: str
    task: str
    num_images: int = 1
    error_type: str | None = None
    error_message: str | None = None
    step: int = 0
    total: int = 0
    occurred_at: float
    enqueued_at: float
    attempts: int = 0


@dataclass(frozen=True)
class Claimed:
    """Events due now, claimed for one lease, with Redis's time of the claim."""

    now: float
    messages: list[OutboxMessage]
    broken: list[str]  # ids whose message is gone or unreadable (settle them away)


class Outbox:
    """The deliverer's side of the outbox (the record scripts write it)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(CLAIM)
        self._settle = redis.register_script(SETTLE)

    def claim(self, limit: int, lease_s: float) -> Claimed:
        """Up to `limit` due events, each unavailable to other claims for `lease_s` seconds."""
        reply = self._claim(keys=[keys.webhook_outbox(), keys.webhook_messages()],
                            args=[limit, lease_s])  # fmt: skip
        now = float(reply[0])
        messages, broken = [], []
        for raw_id, raw in zip(reply[1::2], reply[2::2], strict=True):
            message_id = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            try:
                messages.append(OutboxMessage.model_validate_json(raw))
            except ValueError:
                broken.append(message_id)
        return Claimed(now, messages, broken)

    def settle(self, message_id: str, job_id: str, delivery: WebhookDelivery | None) -> None:
        """Remove an event for good (delivered or given up); record the job's delivery state."""
        self._run(message_id, job_id, "", "", delivery)

    def retry(
        self,
        message: OutboxMessage,
        delay_s: float,
        delivery: WebhookDelivery | None,
    ) -> bool:
        """Try again in `delay_s` seconds (the message keeps its new attempt count); False when
        the event was settled meanwhile."""
        return self._run(message.id, message.job_id, f"{delay_s:.6f}",
                         message.model_dump_json(), delivery)  # fmt: skip

    def backlog(self) -> tuple[int, int]:
        """(events waiting, events due now)."""
        seconds, micros = self.redis.time()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.webhook_outbox())
            pipe.zcount(keys.webhook_outbox(), "-inf", seconds + micros / 1e6)
            waiting, due = pipe.execute()
        return int(waiting), int(due)

    def watched(self, limit: int) -> list[str]:
        """Active jobs with a webhook, oldest first (the deliverer reconciles them)."""
        ids = self.redis.zrange(keys.webhook_jobs(), 0, limit - 1)
        return [value.decode() if isinstance(value, bytes) else str(value) for value in ids]

    def unwatch(self, job_ids: Sequence[str]) -> None:
        """Forget jobs that ended or vanished."""
        if job_ids:
            self.redis.zrem(keys.webhook_jobs(), *job_ids)

    def _run(
        self,
        message_id: str,
        job_id: str,
        delay: str,
        message: str,
        delivery: WebhookDelivery | None,
    ) -> bool:
        state = delivery.model_dump_json() if delivery is not None else ""
        script_keys = [keys.webhook_outbox(), keys.webhook_messages(), keys.job(job_id)]
        return bool(self._settle(keys=script_keys, args=[message_id, delay, message, state]))
