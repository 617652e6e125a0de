"""Webhooks at the API and in the job store: 422s at submission (SSRF, schemes), the dialects'
headers, the secret route, and the outbox written atomically with the job's end or progress."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from jobs import keys
from jobs.record import JobRecord
from jobs.schema import JobStatus, ResolvedRequest
from jobs.store import JobStore
from jobs.webhooks import Webhook, WebhookSecrets
from tests.api_harness import KEY_B, ApiServer, serve, tiny_png
from tests.conftest import RedisServer

BODY = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64}
SECRET = "test-server-secret"


@pytest.fixture(scope="module", name="api")
def api_fixture(redis_server: RedisServer) -> Iterator[ApiServer]:
    """Auth on; loopback allowed for webhooks; OpenAI/A1111 answer 504 after a second."""
    env = {"LDM_WEBHOOK_ALLOW": "127.0.0.0/8", "LDM_WEBHOOK_SECRET": SECRET,
           "LDM_SYNC_TIMEOUT": "1", "LDM_WEBHOOK_PROGRESS_INTERVAL": "0.2"}  # fmt: skip
    yield from serve(redis_server.url, env)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://10.0.0.1/hook", "private"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://[::ffff:a00:1]/hook", "private"),
        ("https://0xa9fea9fe/", "cloud metadata"),
        ("file:///etc/passwd", "http:// or https://"),
        ("gopher://example.com/", "http:// or https://"),
    ],
)
def test_forbidden_destinations_are_refused_at_submission(
    api: ApiServer, redis_url: str, url: str, says: str
) -> None:
    with api.client() as http:
        reply = http.post("/v1/txt2img", json={**BODY, "webhook": {"url": url}})
    assert reply.status_code == 422, reply.text
    problem = reply.json()
    assert [error["field"] for error in problem["errors"]] == ["webhook.url"]
    assert says in problem["errors"][0]["message"]
    assert redis.Redis.from_url(redis_url).dbsize() == 0  # nothing queued


def test_a_webhook_is_stored_with_the_job_and_shown(api: ApiServer, redis_url: str) -> None:
    hook = {"url": "https://hooks.example.com/ldm?x=1", "events": ["completed", "progress"]}
    with api.client() as http:
        reply = http.post("/v1/txt2img", json={**BODY, "webhook": hook})
        assert reply.status_code == 202, reply.text
        job = http.get(reply.headers["Location"]).json()
    assert job["webhook"] == {**hook, "delivery": None}
    assert "webhook" not in job["request"]  # not a generation parameter
    raw = redis.Redis.from_url(redis_url).hgetall(keys.job(job["id"]))
    assert json.loads(raw[b"webhook"]) == hook and float(raw[b"webhook_progress_s"]) == 0.2
    assert redis.Redis.from_url(redis_url).zscore(keys.webhook_jobs(), job["id"]) is not None


def test_multipart_requests_carry_the_webhook_as_json(api: ApiServer, redis_url: str) -> None:
    hook = {"url": "https://hooks.example.com/x", "events": ["failed"]}
    with api.client() as http:
        fields = {"prompt": "a circle", "steps": "4", "webhook": json.dumps(hook)}
        files = {"init_image": ("i.png", tiny_png(64, 64), "image/png")}
        reply = http.post("/v1/img2img", data=fields, files=files)
    assert reply.status_code == 202, reply.text
    assert reply.json()["webhook"] == {**hook, "delivery": None}


def test_cancel_puts_the_event_in_the_outbox_with_the_status_change(
    api: ApiServer, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    hook = {"url": "http://127.0.0.1:9/hook", "events": ["canceled"]}
    with api.client() as http:
        job_id = http.post("/v1/txt2img", json={**BODY, "webhook": hook}).json()["id"]
        assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
        delivery = http.get(f"/v1/jobs/{job_id}").json()["webhook"]["delivery"]
    message_id = f"msg_{job_id}_canceled"
    assert delivery == {"state": "pending", "event": "canceled", "webhook_id": message_id,
                        "attempts": 0, "last_status": None, "last_error": None,
                        "last_attempt_at": None, "next_attempt_at": None,
                        "delivered_at": None}  # fmt: skip
    assert client.zscore(keys.webhook_outbox(), message_id) is not None
    message = json.loads(client.hget(keys.webhook_messages(), message_id) or b"{}")
    assert message["url"] == hook["url"] and message["status"] == "canceled"
    assert client.zscore(keys.webhook_jobs(), job_id) is None  # ended: no longer reconciled


def test_the_secret_route_gives_each_key_its_own_stable_secret(api: ApiServer) -> None:
    with api.client() as http:
        first = http.get("/v1/webhooks/secret").json()["secret"]
        assert http.get("/v1/webhooks/secret").json()["secret"] == first
    with api.client(KEY_B) as http:
        other = http.get("/v1/webhooks/secret").json()["secret"]
    with api.client(None) as http:
        assert http.get("/v1/webhooks/secret").status_code == 401
    assert first.startswith("whsec_") and other.startswith("whsec_") and first != other


def test_without_a_configured_secret_api_and_deliverer_share_one_from_redis(
    redis_url: str,
) -> None:
    api_side = WebhookSecrets(redis.Redis.from_url(redis_url))
    deliverer_side = WebhookSecrets(redis.Redis.from_url(redis_url))
    assert api_side.for_owner("o") == deliverer_side.for_owner("o") != api_side.for_owner("p")
    assert WebhookSecrets(redis.Redis.from_url(redis_url), "x").for_owner("o") != (
        api_side.for_owner("o")
    )


def test_the_dialects_take_the_webhook_from_headers(api: ApiServer, redis_url: str) -> None:
    refused = {"X-Webhook-URL": "http://10.0.0.1/hook"}
    small = {"prompt": "x", "width": 64, "height": 64, "steps": 4}
    with api.client() as http:
        a1111 = http.post("/sdapi/v1/txt2img", json=small, headers=refused)
        openai = http.post("/v1/images/generations", json={"prompt": "x"}, headers=refused)
        events = http.post("/sdapi/v1/txt2img", json=small,
                           headers={"X-Webhook-URL": "https://a.example/",
                                    "X-Webhook-Events": "completed,nope"})  # fmt: skip
        accepted = http.post("/sdapi/v1/txt2img", json=small,
                             headers={"X-Webhook-URL": "https://a.example/h",
                                      "X-Webhook-Events": "failed"})  # fmt: skip
    assert a1111.status_code == 422 and a1111.json()["errors"][0]["field"] == "X-Webhook-URL"
    assert openai.status_code == 400 and openai.json()["error"]["param"] == "X-Webhook-URL"
    assert events.status_code == 422 and events.json()["errors"][0]["field"] == "X-Webhook-Events"
    assert accepted.status_code == 504  # no worker: the job waits, with its webhook
    client = redis.Redis.from_url(redis_url)
    owner_latest = client.keys(keys.a1111_latest("*"))
    job_id = (client.get(owner_latest[0]) or b"").decode()
    stored = json.loads(client.hget(keys.job(job_id), "webhook") or b"{}")
    assert stored == {"url": "https://a.example/h", "events": ["failed"]}


def record(store: JobStore, webhook: Webhook | None, progress_s: float | None = None) -> str:
    """Create a queued job as the API does, with `webhook`."""
    request = ResolvedRequest.model_validate({**BODY, "guidance_scale": 3.0, "sampler": "ddim",
                                              "seed": 1, "model": "default"})  # fmt: skip
    job_id = uuid.uuid4().hex
    store.create(JobRecord(id=job_id, status=JobStatus.queued, owner="o", request=request,
                           created_at=time.time(), webhook=webhook,
                           webhook_progress_s=progress_s))  # fmt: skip
    return job_id


def outbox_ids(store: JobStore) -> list[str]:
    return sorted(m.decode() for m in store.redis.zrange(keys.webhook_outbox(), 0, -1))


def test_only_the_asked_events_enter_the_outbox(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), result_ttl=60)
    quiet = record(store, None)
    failed_only = record(store, Webhook(url="https://a.example/", events=["failed"]))
    done = record(store, Webhook(url="https://a.example/"))
    for job_id in (quiet, failed_only, done):
        store.start(job_id)
        assert store.finish(job_id, JobStatus.succeeded, images=[b"png"])
    assert outbox_ids(store) == [f"msg_{done}_completed"]
    assert store.get(done).webhook_delivery.state == "pending"  # type: ignore[union-attr]
    assert store.get(quiet).webhook_delivery is None  # type: ignore[union-attr]


def test_progress_events_are_throttled_per_job(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), result_ttl=60)
    hook = Webhook(url="https://a.example/", events=["progress"])
    job_id = record(store, hook, progress_s=0.3)
    store.start(job_id)
    for step in range(1, 6):  # five steps in well under 0.3 s: one event
        store.report_progress({job_id: (step, 10)})
    time.sleep(0.35)
    store.report_progress({job_id: (6, 10)})
    assert outbox_ids(store) == sorted([f"msg_{job_id}_progress_1", f"msg_{job_id}_progress_6"])


def test_an_expired_job_s_reconcile_sends_failed(redis_url: str) -> None:
    store = JobStore(redis.Redis.from_url(redis_url), result_ttl=60)
    job_id = record(store, Webhook(url="https://a.example/"))
    store.queue("default").remove(job_id)
    store.redis.delete(f"rq:job:{job_id}")  # rq dropped it (queue TTL)
    assert store.reconcile(store.get(job_id)).status is JobStatus.expired  # type: ignore[arg-type]
    message = json.loads(store.redis.hget(keys.webhook_messages(), f"msg_{job_id}_failed") or b"")
    assert message["status"] == "expired" and message["event"] == "failed"


def test_openapi_documents_the_webhook_field_and_route(api: ApiServer) -> None:
    schema = httpx.get(f"{api.url}/openapi.json").json()
    hook = schema["components"]["schemas"]["Webhook"]
    assert hook["properties"]["url"]["pattern"].startswith("^https?://")
    assert "/v1/webhooks/secret" in schema["paths"]
