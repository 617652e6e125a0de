"""Per-owner concurrency quota: at most `limit` jobs queued or running per owner, held in Redis.

`ldm:active:<owner>` is a sorted set of the owner's job ids, `ldm:active-cost:<owner>` a hash of
their costs (pixel-steps). Admission is one Lua script, so concurrent submissions on one key can
never both take the last slot or the last of the cost budget:
  1. prune every member that no longer counts (see `_ADMIT`): its record is terminal or gone, or
     rq has dropped or failed its job (what `JobStore.reconcile()` would report);
  2. refuse when `limit` members remain or their costs plus the new one pass the budget, else
     reserve the new id (score: Redis time) with its cost.
The job record and its rq job are then written in one MULTI that also confirms the reservation
(score 0). The record cannot be written by the script itself: rq's enqueue is Python, and a queued
record without its rq job is what reconcile() reads as expired. A reservation whose record does not
appear within RESERVATION_GRACE_S (the API died in between) stops counting. Slots free themselves
when jobs end, are canceled or expire, with no worker involvement. The script reads the members'
`ldm:job:` and `rq:job:` hashes by name: fine on one Redis (the ACL allows `~ldm:* ~rq:*`), not on
Redis Cluster.
"""

from __future__ import annotations

import logging

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import RedisError
from rq.job import Job

from jobs import keys

logger = logging.getLogger(__name__)

# How long a reservation counts before its job record exists (normally a few milliseconds).
RESERVATION_GRACE_S = 30

# KEYS: the owner's active set, its costs hash. ARGV: limit, job id, grace s, set ttl s, job key
# prefix, rq job key prefix, cost budget (0 = none), this job's cost. Returns 1 = admitted (id
# reserved), 0 = `limit` jobs already count, -1 = the cost budget would be exceeded.
_ADMIT = """
local now = tonumber(redis.call('TIME')[1])
local function counts(id, since)
  local status = redis.call('HGET', ARGV[5] .. id, 'status')
  if not status then return since > now - tonumber(ARGV[3]) end
  if status ~= 'queued' and status ~= 'running' then return false end
  local rq_status = redis.call('HGET', ARGV[6] .. id, 'status')
  if not rq_status then return status == 'running' end
  return rq_status ~= 'failed' and rq_status ~= 'canceled' and rq_status ~= 'stopped'
end
local active, cost = 0, 0
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #members, 2 do
  if counts(members[i], tonumber(members[i + 1])) then
    active = active + 1
    cost = cost + tonumber(redis.call('HGET', KEYS[2], members[i]) or '0')
  else
    redis.call('ZREM', KEYS[1], members[i])
    redis.call('HDEL', KEYS[2], members[i])
  end
end
if active >= tonumber(ARGV[1]) then return 0 end
local budget, own = tonumber(ARGV[7]), tonumber(ARGV[8])
if budget > 0 and active > 0 and cost + own > budget then return -1 end
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], own)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 1
"""


class ActiveLimitError(Exception):
    """The owner already has `limit` jobs queued or running."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs already queued or running")
        self.limit = limit


class CostLimitError(Exception):
    """The owner's queued and running jobs would exceed its cost budget (pixel-steps)."""

    def __init__(self, budget: int) -> None:
        super().__init__(f"in-flight cost budget of {budget} pixel-steps reached")
        self.budget = budget


class ActiveJobs:
    """The per-owner set of queued/running job ids behind the concurrency quota."""

    def __init__(self, redis: Redis, ttl: int) -> None:
        self.redis = redis
        # Refreshed on every admission; outlives the longest an admitted job can stay active.
        self.ttl = ttl
        self._admit = redis.register_script(_ADMIT)

    def reserve(self, owner: str, job_id: str, limit: int, cost: int = 0, budget: int = 0) -> None:
        """Prune ended jobs, then reserve a slot for `job_id` of `cost` pixel-steps; raises
        ActiveLimitError when `limit` are active, CostLimitError when the owner's in-flight cost
        would pass `budget` (0: none; a job alone is never refused for cost here)."""
        args: list[str | int] = [limit, job_id, RESERVATION_GRACE_S, self.ttl]
        args += [keys.job(""), Job.key_for(""), budget, cost]
        sets = [keys.active_jobs(owner), keys.active_cost(owner)]
        verdict = int(self._admit(keys=sets, args=args))
        if verdict == 0:
            raise ActiveLimitError(limit)
        if verdict < 0:
            raise CostLimitError(budget)

    def confirm(self, pipe: Pipeline, owner: str, job_id: str) -> None:
        """Queue the reservation's confirmation on the MULTI that writes the job record."""
        pipe.zadd(keys.active_jobs(owner), {job_id: 0})
        pipe.expire(keys.active_jobs(owner), self.ttl)

    def release(self, owner: str, job_id: str) -> None:
        """Best-effort: drop the reservation of a job that was never created."""
        try:
            self.redis.zrem(keys.active_jobs(owner), job_id)
            self.redis.hdel(keys.active_cost(owner), job_id)
        except RedisError:  # Redis is likely down; the reservation lapses after the grace period
            logger.warning("could not release the quota reservation of job %s", job_id)


# KEYS: the rq queue list, its place reservations. ARGV: max depth, job id, grace s.
# Returns 1 = a place is reserved, 0 = queued jobs plus reservations already fill the queue.
_RESERVE_PLACE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
if redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


class QueuePlaces:
    """Queue depth as a quota: a place is reserved atomically (queued + reserved < max) before
    the enqueue, and the enqueue's MULTI turns it into the queued job. Racing submissions can
    never overfill a queue, and none retries: the script decides at once."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._reserve = redis.register_script(_RESERVE_PLACE)

    def reserve(self, queue_key: str, model: str, job_id: str, max_depth: int) -> bool:
        """Reserve a place for `job_id`; False when the queue is full."""
        keys_ = [queue_key, keys.queue_places(model)]
        return bool(self._reserve(keys=keys_, args=[max_depth, job_id, RESERVATION_GRACE_S]))

    def confirm(self, pipe: Pipeline, model: str, job_id: str) -> None:
        """On the enqueue's MULTI: the job is in the queue now, its reservation goes."""
        pipe.zrem(keys.queue_places(model), job_id)

    def release(self, model: str, job_id: str) -> None:
        """Best-effort: drop the reservation of a job that was never enqueued."""
        try:
            self.redis.zrem(keys.queue_places(model), job_id)
        except RedisError:  # the reservation lapses after the grace period
            logger.warning("could not release the queue place of job %s", job_id)
