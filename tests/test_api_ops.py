"""Health, readiness, models, metrics, OpenAPI, no torch, and surviving a Redis restart."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from importlib.metadata import version

import pytest
import redis
from rq.worker import SimpleWorker

from jobs.store import JobStore
from service.routes.health import check_eviction_policy
from tests.api_harness import ApiServer, api_fixture, serve, store_fixture  # noqa: F401
from tests.conftest import REPO, RedisServer

METRIC_NAMES = [
    "ldm_http_requests_total",
    "ldm_http_request_duration_seconds_bucket",
    "ldm_jobs_submitted_total",
    "ldm_queue_depth",
    "ldm_workers_alive",
    "ldm_oldest_queued_job_age_seconds",
    "ldm_redis_used_memory_bytes",
    "ldm_redis_maxmemory_bytes",
]


def test_healthz(api: ApiServer) -> None:
    with api.client(None) as client:
        assert client.get("/healthz").json() == {"status": "ok", "version": version("ldm-serve")}


def test_readyz_follows_live_workers(api: ApiServer, store: JobStore) -> None:
    worker = SimpleWorker([store.queue("default")], connection=store.redis)
    with api.client() as client:
        idle = client.get("/readyz")
        worker.register_birth()
        ready = client.get("/readyz")
        models = client.get("/v1/models").json()["data"]
        worker.register_death()
        store.redis.delete(worker.key)
        gone = client.get("/readyz")
    assert idle.status_code == 503 and int(idle.headers["retry-after"]) >= 1
    assert "no live worker" in idle.json()["detail"]
    assert ready.status_code == 200 and ready.json()["workers"] == 1
    assert models[0]["name"] == "default" and models[0]["workers"] == 1
    assert models[0]["queue"] == "ldm:default" and "dpmpp_2m" in models[0]["samplers"]
    assert gone.status_code == 503


def test_metrics_expose_the_documented_names(api: ApiServer, store: JobStore) -> None:
    with api.client() as client:
        job_id = client.post("/v1/txt2img", json={"prompt": "x"}).json()["id"]
        client.get(f"/v1/jobs/{job_id}")
        client.post("/v1/txt2img", json={"prompt": "x", "steps": 0})
        text = client.get("/metrics").text
    for name in METRIC_NAMES:
        assert f"\n{name}" in text, name
    assert 'ldm_jobs_rejected_total{reason="validation"}' in text
    assert 'ldm_queue_depth{model="default"} 1.0' in text
    assert f'\nldm_build_info{{version="{version("ldm-serve")}"}} 1.0\n' in text
    assert 'route="/v1/jobs/{job_id}"' in text and job_id not in text, "templates, not ids"
    assert "key-a" not in text


def test_openapi_and_docs(api: ApiServer) -> None:
    with api.client(None) as client:
        schema = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    body = schema["components"]["schemas"]["Txt2ImgRequest"]["properties"]
    assert body["steps"]["maximum"] == 50 and body["num_images"]["maximum"] == 3
    samplers = schema["components"]["schemas"]["Sampler"]["enum"]
    assert samplers == ["ddim", "plms", "euler", "euler_a", "heun", "dpmpp_2m"]
    assert {"/v1/txt2img", "/v1/jobs/{job_id}", "/v1/models", "/readyz"} <= set(schema["paths"])


def test_importing_the_app_does_not_load_torch() -> None:
    code = "import sys, service.main; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_redis_outage_is_503_then_recovers(own_redis: RedisServer) -> None:
    for server in serve(own_redis.url, {"LDM_API_KEYS": ""}):  # auth off: anonymous owner
        with server.client(None) as client:
            job = client.post("/v1/txt2img", json={"prompt": "x"}).json()
            own_redis.stop()
            down = client.post("/v1/txt2img", json={"prompt": "x"})
            status_down = client.get(f"/v1/jobs/{job['id']}")
            not_ready = client.get("/readyz")
            metrics = client.get("/metrics")
            own_redis.start()
            # The client fails fast for LDM_REDIS_COOLDOWN (1 s) after an error, then probes.
            deadline = time.monotonic() + 5
            status_up = client.get(f"/v1/jobs/{job['id']}")
            while status_up.status_code == 503 and time.monotonic() < deadline:
                time.sleep(0.1)
                status_up = client.get(f"/v1/jobs/{job['id']}")
            again = client.post("/v1/txt2img", json={"prompt": "x"})
        for reply in (down, status_down):
            assert reply.status_code == 503, reply.text
            assert int(reply.headers["retry-after"]) >= 1
            assert reply.json()["type"].endswith(":redis-unavailable")
            assert "127.0.0.1" not in reply.text and "Traceback" not in reply.text
        assert not_ready.status_code == 503 and metrics.status_code == 200
        assert not_ready.json()["type"].endswith(":redis-unavailable")
        assert status_up.status_code == 200 and status_up.json()["status"] == "queued"
        assert again.status_code == 202


def test_redis_maxmemory_is_503_and_evicts_nothing(own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    for server in serve(own_redis.url, {"LDM_API_KEYS": ""}):
        with server.client(None) as http:
            first = http.post("/v1/txt2img", json={"prompt": "x"}).json()
            client.config_set("maxmemory", client.info("memory")["used_memory"] + 1024)
            full = http.post("/v1/txt2img", json={"prompt": "x"})
            kept = http.get(f"/v1/jobs/{first['id']}")
            client.config_set("maxmemory", 0)
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
        assert full.json()["type"].endswith(":redis-full")
        assert kept.status_code == 200 and kept.json()["status"] == "queued"
        assert JobStore(client).queue("default").job_ids == [first["id"]]
    client.close()


def test_eviction_policy_is_checked_loudly(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(own_redis.url)
    store = JobStore(client)
    assert check_eviction_policy(store)
    client.config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.CRITICAL):
        assert not check_eviction_policy(store)
    assert "noeviction" in caplog.text
    for server in serve(own_redis.url):
        SimpleWorker([store.queue("default")], connection=client).register_birth()
        with server.client(None) as http:
            reply = http.get("/readyz")
        assert reply.status_code == 503 and "noeviction" in reply.json()["detail"]
    client.close()
