"""S2: per-key concurrency quota (jobs queued + running) over real uvicorn + redis, and its Lua."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from jobs import keys
from jobs.quota import RESERVATION_GRACE_S, ActiveLimitError, CostLimitError
from jobs.schema import JobStatus
from jobs.store import JobStore
from service.auth import owner_id
from tests.api_harness import KEY_A, KEY_B, ApiServer, auth, serve, store_fixture  # noqa: F401
from tests.conftest import RedisServer
from tests.test_api_store import queued

LIMIT = 5
BODY = {"prompt": "a lighthouse"}


@pytest.fixture(scope="module")
def api(redis_server: RedisServer) -> Iterator[ApiServer]:
    """Auth on (KEY_A, KEY_B), at most LIMIT active jobs per key, no rate limit, no worker."""
    yield from serve(redis_server.url, {"LDM_MAX_ACTIVE_JOBS_PER_KEY": str(LIMIT)})


def active_count(store: JobStore, key: str = KEY_A) -> int:
    """Members of the key's active-job set (what the quota counts, before any pruning)."""
    return store.redis.zcard(keys.active_jobs(owner_id(key)))


def fill(api: ApiServer, count: int = LIMIT) -> list[str]:
    """Submit `count` jobs on KEY_A; returns their ids."""
    with api.client() as client:
        replies = [client.post("/v1/txt2img", json=BODY) for _ in range(count)]
    assert [reply.status_code for reply in replies] == [202] * count
    return [reply.json()["id"] for reply in replies]


def assert_refused(reply: httpx.Response) -> None:
    assert reply.status_code == 429, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.json()["type"] == "urn:ldm-serve:problem:concurrency-limited"
    assert f"concurrency limit of {LIMIT} queued or running jobs" in reply.json()["detail"]


def test_fifty_parallel_clients_admit_exactly_the_limit(api: ApiServer, store: JobStore) -> None:
    start = threading.Barrier(50)
    samples: list[tuple[int, int]] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append((store.queue("default").count, active_count(store)))
            time.sleep(0.002)

    def post(_: int) -> httpx.Response:
        with httpx.Client(base_url=api.url, headers=auth(KEY_A), timeout=30) as client:
            start.wait()
            return client.post("/v1/txt2img", json=BODY)

    sampler = threading.Thread(target=sample)
    sampler.start()
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(post, range(50)))
    sampling.set()
    sampler.join()

    accepted = [reply for reply in replies if reply.status_code == 202]
    assert len(accepted) == LIMIT
    for reply in replies:
        if reply.status_code != 202:
            assert_refused(reply)
    assert max(max(sample) for sample in samples) <= LIMIT
    assert store.queue("default").count == LIMIT, "nothing is enqueued for a refused request"
    assert sorted(store.queue("default").job_ids) == sorted(r.json()["id"] for r in accepted)
    assert active_count(store) == LIMIT
    owners = [store.redis.hget(name, "owner") for name in store.redis.scan_iter(keys.job("*"))]
    assert owners.count(owner_id(KEY_A).encode()) == LIMIT, "job records of that key"
    with api.client(KEY_B) as other:
        assert other.post("/v1/txt2img", json=BODY).status_code == 202, "other keys unaffected"
        metrics = other.get("/metrics").text
    assert 'ldm_jobs_rejected_total{reason="concurrency_limited"} 45.0' in metrics


def test_canceling_a_queued_job_frees_a_slot(api: ApiServer, store: JobStore) -> None:
    job_ids = fill(api)
    with api.client() as client:
        assert_refused(client.post("/v1/txt2img", json=BODY))
        canceled = client.delete(f"/v1/jobs/{job_ids[0]}")
        admitted = client.post("/v1/txt2img", json=BODY)
        refused_again = client.post("/v1/txt2img", json=BODY)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert admitted.status_code == 202
    assert_refused(refused_again)
    assert store.queue("default").count == LIMIT and active_count(store) == LIMIT


def test_idempotent_replay_at_the_limit_is_the_same_job(api: ApiServer, store: JobStore) -> None:
    fill(api, LIMIT - 1)
    with api.client() as client:
        first = client.post("/v1/txt2img", json=BODY, headers={"Idempotency-Key": "once"})
        replay = client.post("/v1/txt2img", json=BODY, headers={"Idempotency-Key": "once"})
        refused = client.post("/v1/txt2img", json=BODY, headers={"Idempotency-Key": "later"})
        client.delete(f"/v1/jobs/{first.json()['id']}")
        # The refused request left no Idempotency-Key claim behind: retrying it creates the job.
        retried = client.post("/v1/txt2img", json=BODY, headers={"Idempotency-Key": "later"})
    assert first.status_code == 202
    assert replay.status_code == 200 and replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["id"] == first.json()["id"]
    assert_refused(refused)
    assert retried.status_code == 202 and "idempotent-replayed" not in retried.headers
    assert store.queue("default").count == LIMIT and active_count(store) == LIMIT


def test_quota_is_off_without_api_keys(redis_url: str) -> None:
    env = {"LDM_API_KEYS": "", "LDM_MAX_ACTIVE_JOBS_PER_KEY": "1"}
    for server in serve(redis_url, env):
        with server.client(None) as client:
            codes = [client.post("/v1/txt2img", json=BODY).status_code for _ in range(3)]
        assert codes == [202] * 3


def test_admission_prunes_jobs_that_ended_or_vanished(store: JobStore) -> None:
    owner = "owner-1"  # queued()'s owner
    active = keys.active_jobs(owner)
    for job_id in "abcd":
        store.create(queued(job_id), max_active=4)
    store.start("d")
    with pytest.raises(ActiveLimitError):
        store.create(queued("refused"), max_active=4)
    assert store.get("refused") is None and store.queue("default").count == 4, "not enqueued"
    assert 0 < store.redis.ttl(active) <= store.active.ttl

    store.finish("a", JobStatus.succeeded, images=[b"img"])  # terminal record
    store.create(queued("e"), max_active=4)
    store.redis.delete(keys.job("b"))  # record gone
    store.create(queued("f"), max_active=4)
    store.redis.delete(Job.key_for("c"))  # rq dropped it after LDM_QUEUE_TTL; record says queued
    store.create(queued("g"), max_active=4)
    with pytest.raises(ActiveLimitError):
        store.create(queued("h"), max_active=4)
    assert {m.decode() for m in store.redis.zrange(active, 0, -1)} == {"d", "e", "f", "g"}

    Job.fetch("d", connection=store.redis, serializer=JSONSerializer).set_status(RqStatus.FAILED)
    store.create(queued("h"), max_active=4)  # running record whose rq job failed (abandoned)
    assert store.request_cancel("e") is JobStatus.canceled
    store.create(queued("i"), max_active=4)
    assert {m.decode() for m in store.redis.zrange(active, 0, -1)} == {"f", "g", "h", "i"}


def test_reservations_count_until_their_grace_runs_out(store: JobStore) -> None:
    active = keys.active_jobs("owner-1")
    store.active.reserve("owner-1", "in-flight", limit=1)  # record not written yet
    with pytest.raises(ActiveLimitError):
        store.create(queued("next"), max_active=1)
    now = store.redis.time()[0]
    store.redis.zadd(active, {"in-flight": now - RESERVATION_GRACE_S - 1})  # the API died
    store.create(queued("next"), max_active=1)
    assert [m.decode() for m in store.redis.zrange(active, 0, -1)] == ["next"]
    assert store.redis.zscore(active, "next") == 0, "confirmed with the record's MULTI"


def test_cost_budget_refuses_what_would_pass_it_and_frees_as_jobs_end(store: JobStore) -> None:
    """Per-key in-flight cost (pixel-steps): concurrent jobs add up; one job alone always fits."""
    cost = queued("probe").request.cost
    budget = 2 * cost
    store.create(queued("c1"), max_active=32, cost_budget=budget)
    store.create(queued("c2"), max_active=32, cost_budget=budget)
    with pytest.raises(CostLimitError):
        store.create(queued("c3"), max_active=32, cost_budget=budget)
    assert store.get("c3") is None  # nothing was written for the refused job
    assert store.request_cancel("c1") is JobStatus.canceled
    store.create(queued("c3"), max_active=32, cost_budget=budget)
    costs = store.redis.hgetall(keys.active_cost("owner-1"))
    assert {k.decode(): int(v) for k, v in costs.items()} == {"c2": cost, "c3": cost}
    alone = queued("alone").model_copy(update={"owner": "owner-2"})
    store.create(alone, max_active=32, cost_budget=cost // 2)  # a job alone always fits


def test_queue_depth_is_checked_atomically_with_the_enqueue(store: JobStore) -> None:
    """64 threads race for the last places of a queue of 20: exactly 20 get in."""
    from concurrent.futures import ThreadPoolExecutor

    from jobs.store import QueueFullError

    def attempt(i: int) -> bool:
        try:
            store.create(queued(f"race-{i}"), max_queue=20)
        except QueueFullError:
            return False
        return True

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(attempt, range(64)))
    assert sum(results) == 20
    assert store.queue("default").count == 20


@pytest.fixture()
def costly_api(redis_server: RedisServer) -> Iterator[ApiServer]:
    """Keys on; a cost cap of 64x64x10 per request and two such jobs in flight per key."""
    cap = 64 * 64 * 10
    env = {"LDM_MAX_COST": str(cap), "LDM_MAX_COST_PER_KEY": str(2 * cap),
           "LDM_MAX_ACTIVE_JOBS_PER_KEY": "32", "LDM_RATE_LIMIT": "0"}  # fmt: skip
    yield from serve(redis_server.fresh_db(13), env)


def test_cost_cap_and_per_key_budget_over_http(costly_api: ApiServer) -> None:
    small = {"prompt": "a cat", "width": 64, "height": 64, "steps": 10}
    with costly_api.client(KEY_A) as a, costly_api.client(KEY_B) as b:
        too_big = a.post("/v1/txt2img", json={**small, "steps": 11})
        assert too_big.status_code == 422, too_big.text
        assert "LDM_MAX_COST" in too_big.json()["detail"]
        assert [a.post("/v1/txt2img", json=small).status_code for _ in range(2)] == [202, 202]
        third = a.post("/v1/txt2img", json=small)
        assert third.status_code == 429, third.text
        assert third.json()["type"].endswith(":cost-limited") and "Retry-After" in third.headers
        assert b.post("/v1/txt2img", json=small).status_code == 202  # other keys unaffected
