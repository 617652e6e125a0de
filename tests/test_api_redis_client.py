"""The API's Redis client against a real redis-server: breaker, deadline and the redis-py
internals they hook (service/redis_client.py's docstring lists them)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from jobs.store import JobStore
from service.redis_client import (
    GuardedConnection,
    RedisCircuitOpen,
    RedisDeadlineExceeded,
    connect_redis,
    request_deadline,
)
from tests.conftest import RedisServer

TIMEOUT_S = 0.5
COOLDOWN_S = 0.5


@pytest.fixture()
def client(own_redis: RedisServer) -> Iterator[redis.Redis]:
    connection = connect_redis(own_redis.url, timeout_s=TIMEOUT_S, cooldown_s=COOLDOWN_S)
    yield connection
    connection.close()


def elapsed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    """Seconds `call` took and the Redis error it raised (None: it answered)."""
    start = time.monotonic()
    try:
        call()
    except redis.RedisError as exc:
        return time.monotonic() - start, exc
    return time.monotonic() - start, None


def test_the_hooked_internals_exist() -> None:
    for cls in (Connection, SSLConnection, UnixDomainSocketConnection):
        for name in ("_connect", "send_packed_command", "read_response", "socket_timeout"):
            assert hasattr(cls, name), (cls, name)
    pool = redis.ConnectionPool.from_url("redis://x", connection_class=GuardedConnection, a=1)
    assert pool.connection_class is GuardedConnection and pool.connection_kwargs["a"] == 1


def test_commands_pipelines_and_scripts_go_through(client: redis.Redis) -> None:
    store = JobStore(client)
    assert isinstance(client.connection_pool.make_connection(), GuardedConnection)
    client.set("k", "v")
    with client.pipeline(transaction=True) as pipe:
        pipe.get("k").incr("n")
        assert pipe.execute() == [b"v", 1]
    assert client.register_script("return ARGV[1]")(args=["x"]) == b"x"
    assert store.queue("default").count == 0 and store.fleet.live_workers("default") == 0


def test_frozen_redis_trips_the_breaker_then_a_probe_closes_it(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    assert own_redis.process is not None and client.ping()
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        first, error = elapsed(lambda: client.get("k"))
        assert isinstance(error, RedisTimeoutError) and TIMEOUT_S <= first < TIMEOUT_S + 0.3
        fast, error = elapsed(lambda: client.get("k"))
        assert isinstance(error, RedisCircuitOpen) and fast < 0.01
        time.sleep(COOLDOWN_S)
        probe, error = elapsed(lambda: client.get("k"))  # the probe: Redis still frozen
        assert isinstance(error, RedisTimeoutError) and probe >= TIMEOUT_S
        assert isinstance(elapsed(lambda: client.get("k"))[1], RedisCircuitOpen)
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    time.sleep(COOLDOWN_S)
    assert client.get("k") is None, "the probe got through: closed again"
    healthy, error = elapsed(lambda: client.set("k", "v"))
    assert error is None and healthy < 0.05


def test_a_deadline_cuts_a_call_short_without_tripping(
    client: redis.Redis, own_redis: RedisServer
) -> None:
    assert own_redis.process is not None and client.ping()
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        with request_deadline(0.1):
            cut, error = elapsed(lambda: client.get("k"))
            assert isinstance(error, RedisTimeoutError) and 0.1 <= cut < 0.3
            late, error = elapsed(lambda: client.get("k"))
            assert isinstance(error, RedisDeadlineExceeded) and late < 0.01
    finally:
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert client.ping(), "a deadline says nothing about Redis: the breaker stayed closed"


def test_refused_connections_fail_fast(client: redis.Redis, own_redis: RedisServer) -> None:
    assert client.ping()
    own_redis.stop()
    _, error = elapsed(lambda: client.get("k"))
    assert isinstance(error, RedisConnectionError)
    fast, error = elapsed(lambda: client.get("k"))
    assert isinstance(error, RedisCircuitOpen) and fast < 0.01
    own_redis.start()
    time.sleep(COOLDOWN_S)
    assert client.ping()
