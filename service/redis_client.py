"""The API's Redis client: a per-request deadline and a circuit breaker instead of retries.

A frozen Redis (process stopped, connections open, nothing answers) must cost a request at most
its deadline, and must cost the requests after the first timeout nothing at all: after a timeout
or connection error the breaker opens and every call fails at once (503) for `cooldown_s`; then
one call probes Redis and closes the breaker if it answers. Without a request (startup), a call
waits at most `timeout_s`.

redis-py internals this leans on (pinned by tests/test_api_redis_client.py): ConnectionPool passes
its extra kwargs to `connection_class`; every command goes through the connection's
`send_packed_command` then `read_response`; `_connect` opens the socket, held in `_sock`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from starlette.types import ASGIApp, Receive, Scope, Send

logger = logging.getLogger(__name__)
T = TypeVar("T")


class RedisCircuitOpen(RedisConnectionError):
    """Redis failed moments ago: refused without touching the network."""


class RedisDeadlineExceeded(RedisTimeoutError):
    """The request's deadline passed before this Redis call could start."""


@dataclass(frozen=True)
class Deadline:
    """Monotonic time by which a request's Redis calls must have answered, and its budget."""

    at: float
    budget_s: float


_deadline: ContextVar[Deadline | None] = ContextVar("ldm_redis_deadline", default=None)


@contextmanager
def request_deadline(budget_s: float) -> Iterator[None]:
    """Redis calls inside (threads started inside included) must answer within `budget_s`."""
    token = _deadline.set(Deadline(time.monotonic() + budget_s, budget_s))
    try:
        yield
    finally:
        _deadline.reset(token)


@contextmanager
def renewed_deadline() -> Iterator[None]:
    """A fresh deadline of the current budget: one step of a long response (an SSE poll)."""
    current = _deadline.get()
    if current is None:
        yield
        return
    with request_deadline(current.budget_s):
        yield


def with_fresh_deadline(call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` under a renewed deadline: one Redis step of a request that waits (a stream's
    poll, a synchronous dialect's wait for its job), whose own deadline has passed."""
    with renewed_deadline():
        return call(*args)


class RedisDeadline:
    """ASGI middleware: each HTTP request's Redis calls share one deadline from its arrival."""

    def __init__(self, app: ASGIApp, budget_s: float) -> None:
        self.app = app
        self.budget_s = budget_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the request under its deadline."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_deadline(self.budget_s):
            await self.app(scope, receive, send)


class CircuitBreaker:
    """Closed -> (a failure) open for `cooldown_s` -> one thread probes -> closed or open again."""

    def __init__(self, cooldown_s: float, probe_s: float) -> None:
        self.cooldown_s = cooldown_s
        self.probe_s = probe_s  # a probe that neither succeeds nor fails frees its turn after this
        self._open_until = 0.0  # 0: closed
        self._probe_until = 0.0
        self._prober = 0  # thread id of the probing request (its reconnect and calls go through)
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        """True while Redis is believed healthy."""
        return self._open_until == 0.0

    def allow(self) -> bool:
        """Whether a call may go to Redis now (closed, or this thread is the probe)."""
        if self.closed:
            return True
        me = threading.get_ident()
        with self._lock:
            now = time.monotonic()
            if self.closed or (self._prober == me and now < self._probe_until):
                return True
            if now >= max(self._open_until, self._probe_until):
                self._prober, self._probe_until = me, now + self.probe_s
                return True
            return False

    def succeeded(self) -> None:
        """Redis answered: close."""
        if self.closed:
            return
        with self._lock:
            self._open_until = self._probe_until = 0.0
        logger.warning("redis answers again; circuit closed")

    def failed(self) -> None:
        """Redis timed out or refused: open (again) for `cooldown_s`."""
        with self._lock:
            was_closed = self.closed
            self._open_until = time.monotonic() + self.cooldown_s
            self._probe_until = 0.0
        if was_closed:
            logger.warning(
                "redis unreachable: failing fast, one probe every %.1fs", self.cooldown_s
            )


class _Guarded:
    """Connection mixin: breaker and deadline around each send and read (see module docstring)."""

    _sock: Any

    def __init__(self, *args: Any, breaker: CircuitBreaker, **kwargs: Any) -> None:
        self._breaker = breaker
        super().__init__(*args, **kwargs)

    def _timeout(self) -> float:
        """Seconds this call may wait: the socket timeout, cut to what the deadline leaves."""
        timeout: float = self.socket_timeout  # type: ignore[attr-defined]
        deadline = _deadline.get()
        if deadline is None:
            return timeout
        return min(timeout, deadline.at - time.monotonic())

    def _admit(self) -> float:
        if not self._breaker.allow():
            raise RedisCircuitOpen("redis failed moments ago; not retried yet")
        timeout = self._timeout()
        if timeout <= 0:
            raise RedisDeadlineExceeded("request deadline passed before this redis call")
        return timeout

    def _failed(self, exc: Exception, timeout: float) -> None:
        if isinstance(exc, RedisCircuitOpen | RedisDeadlineExceeded):
            return  # refused here, never reached Redis
        # A timeout cut short by the request's deadline says nothing about Redis.
        cut_short = timeout < self.socket_timeout  # type: ignore[attr-defined]
        if not (isinstance(exc, RedisTimeoutError) and cut_short):
            self._breaker.failed()

    def _connect(self) -> Any:
        self._admit()
        try:
            return super()._connect()  # type: ignore[misc]
        except OSError:
            self._breaker.failed()
            raise

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        """Send, unless the breaker is open or the deadline passed (nothing sent then)."""
        timeout = self._admit()
        if self._sock is not None:
            self._sock.settimeout(timeout)
        try:
            super().send_packed_command(command, check_health)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._failed(exc, timeout)
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """Read within what the deadline leaves (a reply already here is read at once)."""
        timeout = max(self._timeout(), 0.001)
        if self._sock is not None:
            self._sock.settimeout(timeout)
        try:
            response = super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (RedisConnectionError, RedisTimeoutError) as exc:
            self._failed(exc, timeout)
            raise
        self._breaker.succeeded()
        return response


class GuardedConnection(_Guarded, Connection):
    """TCP (redis://)."""


class GuardedSSLConnection(_Guarded, SSLConnection):
    """TLS (rediss://)."""


class GuardedUnixConnection(_Guarded, UnixDomainSocketConnection):
    """Unix socket (unix://)."""


def connect_redis(url: str, *, timeout_s: float, cooldown_s: float) -> Redis:
    """Redis client of the API: no retries, `timeout_s` per call, the breaker, the deadline."""
    scheme = url.partition("://")[0]
    connection_class = {"rediss": GuardedSSLConnection, "unix": GuardedUnixConnection}.get(
        scheme, GuardedConnection
    )
    pool = ConnectionPool.from_url(
        url,
        connection_class=connection_class,
        breaker=CircuitBreaker(cooldown_s, probe_s=timeout_s),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return Redis(connection_pool=pool)
