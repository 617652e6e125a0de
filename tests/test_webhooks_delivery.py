"""Webhook delivery end to end, every piece a real process: Redis, uvicorn, a worker on the tiny
model, `ldm-serve webhooks`, and a receiver that checks each signature with the standardwebhooks
package. Receivers that fail, vanish and come back; a deliverer killed with SIGKILL mid-retry and
mid-attempt; the SSRF rule after DNS; a job that expires with nobody polling it."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import redis

from jobs.store import JobStore
from tests.api_harness import ApiServer, serve
from tests.conftest import RedisServer
from tests.webhook_harness import DelivererProcess, Receiver, wait_until
from tests.worker_harness import WorkerProcess, tiny_model

__all__ = ["tiny_model"]
pytestmark = pytest.mark.slow

SECRET = "delivery-test-server-secret"
BODY = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 1}


@pytest.fixture(scope="module", name="api")
def api_fixture(redis_server: RedisServer) -> Iterator[ApiServer]:
    env = {"LDM_WEBHOOK_ALLOW": "127.0.0.0/8", "LDM_WEBHOOK_SECRET": SECRET,
           "LDM_WEBHOOK_PROGRESS_INTERVAL": "0.05"}  # fmt: skip
    yield from serve(redis_server.url, env)


@pytest.fixture(name="processes")
def processes_fixture() -> Iterator[list[Any]]:
    """Processes a test starts; stopped (killed) at its end whatever happened."""
    started: list[Any] = []
    yield started
    for process in reversed(started):
        process.stop()


def secret_of(api: ApiServer) -> str:
    with api.client() as http:
        return http.get("/v1/webhooks/secret").json()["secret"]


def submit(api: ApiServer, url: str, events: list[str], **body: object) -> str:
    with api.client() as http:
        hook = {"url": url, "events": events}
        reply = http.post("/v1/txt2img", json={**BODY, **body, "webhook": hook})
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def delivery(api: ApiServer, job_id: str) -> dict[str, Any]:
    with api.client() as http:
        return http.get(f"/v1/jobs/{job_id}").json()["webhook"]["delivery"] or {}


def by_id(received: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in received:
        grouped[entry["id"]].append(entry)
    return grouped


def assert_signed_and_consistent(received: list[dict[str, Any]]) -> None:
    """Nothing unsigned; every repeat of a webhook id carries the same body."""
    assert received and all(entry["verified"] for entry in received), received
    for message_id, entries in by_id(received).items():
        assert len({entry["body"] for entry in entries}) == 1, message_id


def test_a_job_s_events_arrive_signed_and_a_failing_receiver_gets_retries(
    api: ApiServer, redis_url: str, tiny_model: Path, tmp_path: Path, processes: list[Any]
) -> None:
    receiver = Receiver(tmp_path, secret_of(api), fail_first=2).start()
    processes.append(receiver)
    deliverer = DelivererProcess(redis_url, tmp_path, {"LDM_WEBHOOK_SECRET": SECRET}).start()
    processes.append(deliverer)
    processes.append(WorkerProcess(redis_url, tiny_model, tmp_path, {}).start())
    job_id = submit(api, receiver.url, ["completed", "progress"], steps=20)
    state = wait_until(lambda: delivery(api, job_id).get("state") == "delivered"
                       and delivery(api, job_id), 90, "the completed event")  # fmt: skip
    assert state["attempts"] == 3 and state["last_status"] == 200 and state["delivered_at"]
    received = receiver.deliveries()
    assert_signed_and_consistent(received)
    grouped = by_id(received)
    completed = grouped[f"msg_{job_id}_completed"]
    assert [entry["status"] for entry in completed] == [500, 500, 200]
    body = json.loads(completed[0]["body"])
    assert body["type"] == "job.completed" and body["data"]["status"] == "succeeded"
    assert body["data"]["images"] == [f"/v1/jobs/{job_id}/images/0"]
    progress = [json.loads(e[0]["body"]) for i, e in grouped.items() if "_progress_" in i]
    assert progress and {event["type"] for event in progress} == {"job.progress"}
    assert all(0 < event["data"]["progress"]["step"] <= 20 for event in progress)
    metrics = deliverer.metrics()
    assert metrics['ldm_webhook_deliveries_total{event="completed",outcome="delivered"}'] == 1
    assert metrics[f'ldm_build_info{{version="{version("ldm-serve")}"}}'] == 1
    assert metrics['ldm_webhook_attempts_total{result="5xx"}'] >= 2
    assert metrics["ldm_webhook_attempt_duration_seconds_count"] >= 3


def test_nothing_is_lost_when_the_receiver_is_down_and_the_deliverer_killed(
    api: ApiServer, redis_url: str, tmp_path: Path, processes: list[Any]
) -> None:
    receiver = Receiver(tmp_path, secret_of(api))  # not listening yet
    processes.append(receiver)
    env = {"LDM_WEBHOOK_SECRET": SECRET}
    first = DelivererProcess(redis_url, tmp_path, env).start()
    processes.append(first)
    job_ids = [submit(api, receiver.url, ["canceled"]) for _ in range(4)]
    with api.client() as http:  # no worker: each cancel ends a queued job (its event)
        for job_id in job_ids:
            assert http.delete(f"/v1/jobs/{job_id}").json()["status"] == "canceled"
    wait_until(lambda: all(delivery(api, j).get("attempts", 0) >= 2 for j in job_ids), 30,
               "a few refused connections per event")  # fmt: skip
    state = delivery(api, job_ids[0])
    assert state["state"] == "retrying" and "Connection refused" in state["last_error"]
    first.kill9()  # mid-retry: leases and schedules stay in Redis
    receiver.start()
    time.sleep(1.0)
    assert receiver.deliveries() == []  # only the deliverer sends
    processes.append(DelivererProcess(redis_url, tmp_path, env).start())
    wait_until(lambda: all(delivery(api, j).get("state") == "delivered" for j in job_ids), 30,
               "every event after the restart")  # fmt: skip
    received = receiver.deliveries()
    assert_signed_and_consistent(received)
    assert set(by_id(received)) == {f"msg_{job_id}_canceled" for job_id in job_ids}
    assert redis.Redis.from_url(redis_url).zcard("ldm:webhooks:outbox") == 0


def test_a_deliverer_killed_mid_attempt_resends_with_the_same_id(
    api: ApiServer, redis_url: str, tmp_path: Path, processes: list[Any]
) -> None:
    receiver = Receiver(tmp_path, secret_of(api), hold=3.0).start()  # slow first answers
    processes.append(receiver)
    env = {"LDM_WEBHOOK_SECRET": SECRET, "LDM_WEBHOOK_TIMEOUT": "5"}  # lease: 20 s
    first = DelivererProcess(redis_url, tmp_path, env).start()
    processes.append(first)
    job_id = submit(api, receiver.url, ["canceled"])
    with api.client() as http:
        http.delete(f"/v1/jobs/{job_id}")
    wait_until(receiver.deliveries, 10, "the first attempt to arrive")
    first.kill9()  # the receiver got the event, the deliverer never heard back
    processes.append(DelivererProcess(redis_url, tmp_path, env).start())
    wait_until(lambda: delivery(api, job_id).get("state") == "delivered", 40,
               "the redelivery once the lease ran out")  # fmt: skip
    received = receiver.deliveries()
    assert_signed_and_consistent(received)
    assert [entry["id"] for entry in received] == [f"msg_{job_id}_canceled"] * 2


def test_a_host_name_that_resolves_to_loopback_is_refused_when_delivering(
    api: ApiServer, redis_url: str, tmp_path: Path, processes: list[Any]
) -> None:
    receiver = Receiver(tmp_path, secret_of(api)).start()
    processes.append(receiver)
    env = {"LDM_WEBHOOK_SECRET": SECRET, "LDM_WEBHOOK_ALLOW": ""}  # loopback not allowed here
    deliverer = DelivererProcess(redis_url, tmp_path, env).start()
    processes.append(deliverer)
    url = f"http://localhost:{receiver.port}/hook"  # a name: the API cannot judge it
    job_id = submit(api, url, ["canceled"])
    with api.client() as http:
        http.delete(f"/v1/jobs/{job_id}")
    state = wait_until(lambda: delivery(api, job_id).get("state") == "failed"
                       and delivery(api, job_id), 20, "the refusal")  # fmt: skip
    assert state["attempts"] == 1 and "localhost -> 127.0.0.1 is a loopback" in state["last_error"]
    assert receiver.deliveries() == []
    metrics = deliverer.metrics()
    assert metrics['ldm_webhook_deliveries_total{event="canceled",outcome="refused"}'] == 1


def test_a_job_that_expires_unwatched_still_sends_failed(
    api: ApiServer, redis_url: str, tmp_path: Path, processes: list[Any]
) -> None:
    receiver = Receiver(tmp_path, secret_of(api)).start()
    processes.append(receiver)
    job_id = submit(api, receiver.url, ["completed", "failed"])
    store = JobStore(redis.Redis.from_url(redis_url))
    store.queue("default").remove(job_id)
    store.redis.delete(f"rq:job:{job_id}")  # rq let it expire; nobody GETs the job
    processes.append(DelivererProcess(redis_url, tmp_path, {"LDM_WEBHOOK_SECRET": SECRET}).start())
    wait_until(receiver.deliveries, 20, "the failed event from the deliverer's sweep")
    (entry,) = receiver.deliveries()
    body = json.loads(entry["body"])
    assert entry["verified"] and entry["id"] == f"msg_{job_id}_failed"
    assert body["type"] == "job.failed" and body["data"]["status"] == "expired"


def test_sigterm_drains_and_exits_zero(redis_url: str, tmp_path: Path) -> None:
    deliverer = DelivererProcess(redis_url, tmp_path, {"LDM_WEBHOOK_SECRET": SECRET}).start()
    assert deliverer.stop() == 0
