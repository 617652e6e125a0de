"""A frozen Redis (SIGSTOP: connections open, nothing answers) must not hang the API.

/healthz never touches Redis; every Redis-backed request answers 503 redis-unavailable within
about 2 s however many clients poll; /metrics skips the Redis gauges; SIGCONT recovers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.api_harness import KEY_A, ApiServer, auth, serve
from tests.conftest import RedisServer

POLLERS = 60
FROZEN_S = 8.0
POLL_INTERVAL_S = 0.2  # a client polling a job's status 5 times a second
HEALTHZ_MAX_S = 0.2
ANSWER_MAX_S = 2.5


pytestmark = pytest.mark.slow  # real processes for tens of seconds: full tier only


@pytest.fixture()
def api(own_redis: RedisServer) -> Iterator[ApiServer]:
    yield from serve(own_redis.url)


Answer = tuple[float, int, str]  # seconds, status, problem type


def timed(send: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    start = time.monotonic()
    reply = send()
    return time.monotonic() - start, reply


def poll(
    url: str, path: str, ready: threading.Barrier, stop: threading.Event, out: list[Answer]
) -> None:
    """Once all are ready, GET `path` until `stop`, recording each answer."""
    with httpx.Client(base_url=url, headers=auth(KEY_A), timeout=60) as client:
        ready.wait(timeout=60)  # clients built (TLS contexts and all) before anything is measured
        while not stop.is_set():
            seconds, reply = timed(lambda: client.get(path))
            kind = reply.json().get("type", "") if reply.status_code >= 400 else ""
            out.append((seconds, reply.status_code, kind))
            stop.wait(POLL_INTERVAL_S)


def test_frozen_redis_is_fast_503s_then_recovers(api: ApiServer, own_redis: RedisServer) -> None:
    assert own_redis.process is not None
    with api.client() as client:
        job_id = client.post("/v1/txt2img", json={"prompt": "x"}).json()["id"]
        assert client.get(f"/v1/jobs/{job_id}").status_code == 200
    polls: list[Answer] = []
    health: list[float] = []
    others: dict[str, tuple[float, httpx.Response]] = {}
    stop, ready = threading.Event(), threading.Barrier(POLLERS + 1)
    path = f"/v1/jobs/{job_id}"
    pollers = [
        threading.Thread(target=poll, args=(api.url, path, ready, stop, polls))
        for _ in range(POLLERS)
    ]
    for thread in pollers:
        thread.start()
    client = httpx.Client(base_url=api.url, headers=auth(KEY_A), timeout=60)
    anonymous = httpx.Client(base_url=api.url, timeout=60)
    os.kill(own_redis.process.pid, signal.SIGSTOP)
    try:
        ready.wait(timeout=60)
        with client, anonymous:
            deadline = time.monotonic() + FROZEN_S
            while time.monotonic() < deadline:
                health.append(timed(lambda: anonymous.get("/healthz"))[0])
                time.sleep(0.1)
                if time.monotonic() > deadline - FROZEN_S / 2 and not others:
                    others["POST"] = timed(lambda: client.post("/v1/txt2img", json={"prompt": "y"}))
                    for route in ("/readyz", "/v1/models", "/metrics"):
                        others[route] = timed(lambda route=route: client.get(route))
        stop.set()
        for thread in pollers:
            thread.join(timeout=120)
    finally:
        stop.set()
        os.kill(own_redis.process.pid, signal.SIGCONT)
    assert len(polls) >= POLLERS and len(health) > 10
    slowest = max(seconds for seconds, _, _ in polls)
    assert {status for _, status, _ in polls} == {503}, polls
    assert {kind for _, _, kind in polls} == {"urn:ldm-serve:problem:redis-unavailable"}
    assert slowest < ANSWER_MAX_S, f"slowest GET {slowest:.2f}s of {len(polls)}"
    assert max(health) < HEALTHZ_MAX_S, f"/healthz p100 {max(health):.3f}s"
    for name, (seconds, reply) in others.items():
        assert seconds < ANSWER_MAX_S, f"{name} took {seconds:.2f}s"
        if name == "/metrics":
            assert reply.status_code == 200 and "ldm_http_requests_total" in reply.text
            assert "ldm_queue_depth{" not in reply.text  # skipped, not stale or blocking
        else:
            assert reply.status_code == 503, (name, reply.text)
            assert reply.json()["type"] == "urn:ldm-serve:problem:redis-unavailable", name
            assert int(reply.headers["retry-after"]) >= 1
    with api.client() as client:
        recovered = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and recovered is None:
            reply = client.get(f"/v1/jobs/{job_id}")
            recovered = reply if reply.status_code == 200 else time.sleep(0.1)
        assert recovered is not None and recovered.json()["status"] == "queued"
        assert client.post("/v1/txt2img", json={"prompt": "z"}).status_code == 202
