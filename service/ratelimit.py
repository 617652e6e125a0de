"""Per-key token bucket in Redis: LDM_RATE_LIMIT submissions per minute, bursts up to that."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis

from jobs import keys
from service.auth import Owner
from service.errors import Problem

# KEYS[1] bucket hash. ARGV: capacity, refill tokens/s. Returns {allowed, seconds until a token}.
_TAKE = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(bucket[1]) or capacity
local last = tonumber(bucket[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - last) * rate)
local allowed, wait = 0, 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(wait)}
"""


class RateLimiter:
    """Token bucket per owner; `per_minute` 0 disables it."""

    def __init__(self, redis: Redis, per_minute: int) -> None:
        self.per_minute = per_minute
        self._take = redis.register_script(_TAKE)

    def take(self, owner: str) -> float:
        """Consume one token; returns 0 when allowed, else seconds until the next token."""
        if self.per_minute <= 0:
            return 0.0
        allowed, wait = self._take(
            keys=[keys.rate_limit(owner)], args=[self.per_minute, self.per_minute / 60]
        )
        return 0.0 if int(allowed) else float(wait)


async def get_rate_limiter(request: Request) -> RateLimiter:
    """The app's submission rate limiter (app.state.rate_limiter)."""
    return request.app.state.rate_limiter


def enforce_rate_limit(
    limiter: Annotated[RateLimiter, Depends(get_rate_limiter)], owner: Owner
) -> str:
    """Dependency: 429 with Retry-After once the caller's bucket is empty; returns the owner."""
    wait = limiter.take(owner)
    if wait > 0:
        raise Problem(
            429,
            "rate-limited",
            "Too many requests",
            f"rate limit of {limiter.per_minute} submissions per minute exceeded",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return owner


RateLimitedOwner = Annotated[str, Depends(enforce_rate_limit)]
