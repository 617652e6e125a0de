"""Per-key rate limit (429 + Retry-After) and queue depth limit (503 + Retry-After)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobs.store import JobStore
from tests.api_harness import KEY_B, ApiServer, serve, store_fixture  # noqa: F401
from tests.conftest import RedisServer


@pytest.fixture(scope="module")
def limited(redis_server: RedisServer) -> Iterator[ApiServer]:
    """2 submissions per minute per key, at most 3 queued jobs."""
    yield from serve(redis_server.url, {"LDM_RATE_LIMIT": "2", "LDM_MAX_QUEUE": "3"})


def test_rate_limit_is_per_key(limited: ApiServer, store: JobStore) -> None:
    with limited.client() as client, limited.client(KEY_B) as other:
        codes = [client.post("/v1/txt2img", json={"prompt": "x"}).status_code for _ in range(2)]
        limited_reply = client.post("/v1/txt2img", json={"prompt": "x"})
        other_code = other.post("/v1/txt2img", json={"prompt": "x"}).status_code
        reads = client.get("/v1/models").status_code
    assert codes == [202, 202] and other_code == 202 and reads == 200
    assert limited_reply.status_code == 429
    assert limited_reply.headers["content-type"] == "application/problem+json"
    assert 1 <= int(limited_reply.headers["retry-after"]) <= 60
    assert limited_reply.json()["type"].endswith(":rate-limited")
    assert store.queue("default").count == 3


def test_full_queue_is_503_with_retry_after(limited: ApiServer, store: JobStore) -> None:
    with limited.client() as client, limited.client(KEY_B) as other:
        accepted = [client.post("/v1/txt2img", json={"prompt": "x"}) for _ in range(2)]
        accepted.append(other.post("/v1/txt2img", json={"prompt": "x"}))
        full = other.post("/v1/txt2img", json={"prompt": "x"}, headers={"Idempotency-Key": "q"})
        metrics = client.get("/metrics").text
    assert [reply.status_code for reply in accepted] == [202, 202, 202]
    assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
    assert full.json()["type"].endswith(":queue-full")
    assert store.queue("default").count == 3
    assert 'ldm_jobs_rejected_total{reason="queue_full"}' in metrics
    assert 'ldm_jobs_rejected_total{reason="rate_limited"}' in metrics
