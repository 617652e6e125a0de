"""/v1/jobs/{id} over real uvicorn + redis, with a simulated worker writing through JobStore."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from jobs import keys
from jobs.record import JobError
from jobs.schema import JobStatus
from jobs.store import JobStore
from tests.api_harness import KEY_B, ApiServer, api_fixture, store_fixture, tiny_png  # noqa: F401


def submit(api: ApiServer, **body: object) -> dict:
    """POST a job and return its JSON."""
    with api.client() as client:
        reply = client.post("/v1/txt2img", json={"prompt": "a lighthouse", **body})
    assert reply.status_code == 202, reply.text
    return reply.json()


def take(store: JobStore, job_id: str) -> None:
    """What a worker does on dequeue: pop the rq job, mark it started, then start the record."""
    queue = store.queue("default")
    store.redis.lrem(queue.key, 0, job_id)
    Job.fetch(job_id, connection=store.redis, serializer=JSONSerializer).set_status(
        RqStatus.STARTED
    )
    assert store.start(job_id) is not None


def test_status_while_queued_has_position(api: ApiServer, store: JobStore) -> None:
    first, second = submit(api), submit(api, steps=7)
    with api.client() as client:
        view = client.get(f"/v1/jobs/{second['id']}").json()
        assert client.get(f"/v1/jobs/{first['id']}").json()["queue_position"] == 0
    assert view["status"] == "queued" and view["queue_position"] == 1
    assert view["progress"] == {"step": 0, "total": 7}
    assert view["request"]["steps"] == 7 and view["started_at"] is None
    assert view["images"] == [] and view["error"] is None


def test_cancel_queued_job_never_runs(api: ApiServer, store: JobStore) -> None:
    job = submit(api)
    with api.client() as client:
        reply = client.delete(f"/v1/jobs/{job['id']}")
        again = client.delete(f"/v1/jobs/{job['id']}")
        view = client.get(f"/v1/jobs/{job['id']}").json()
    assert reply.status_code == 200 and reply.json()["status"] == "canceled"
    assert again.status_code == 200
    assert view["status"] == "canceled" and view["finished_at"] is not None
    rq_job = Job.fetch(job["id"], connection=store.redis, serializer=JSONSerializer)
    assert rq_job.get_status() == RqStatus.CANCELED
    assert store.queue("default").count == 0
    worker = SimpleWorker([store.queue("default")], connection=store.redis)
    assert not worker.work(burst=True)
    assert store.get(job["id"]).attempts == 0  # type: ignore[union-attr]


def test_cancel_running_job_flags_worker(api: ApiServer, store: JobStore) -> None:
    job = submit(api)
    take(store, job["id"])
    with api.client() as client:
        reply = client.delete(f"/v1/jobs/{job['id']}")
    assert reply.status_code == 202 and reply.json()["status"] == "running"
    assert store.report_progress({job["id"]: (2, 25)}) == {job["id"]}
    store.finish(job["id"], JobStatus.canceled)
    with api.client() as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_worker_progress_then_images(api: ApiServer, store: JobStore, fmt: str) -> None:
    job = submit(api, num_images=2, output_format=fmt, steps=4)
    take(store, job["id"])
    store.report_progress({job["id"]: (3, 4)})
    with api.client() as client:
        running = client.get(f"/v1/jobs/{job['id']}").json()
        not_ready = client.get(f"/v1/jobs/{job['id']}/images/0")
        images = [tiny_png(), tiny_png(2, 2)]
        store.finish(job["id"], JobStatus.succeeded, images=images, sampling_s=1.5, decode_s=0.25)
        done = client.get(f"/v1/jobs/{job['id']}").json()
        fetched = [client.get(url) for url in done["images"]]
        out_of_range = client.get(f"/v1/jobs/{job['id']}/images/2")
    assert running["status"] == "running" and running["progress"] == {"step": 3, "total": 4}
    assert running["started_at"] is not None and running["timings"]["queue_wait_s"] >= 0
    assert not_ready.status_code == 409
    assert done["status"] == "succeeded" and done["progress"] == {"step": 4, "total": 4}
    assert done["timings"]["sampling_s"] == 1.5 and done["timings"]["decode_s"] == 0.25
    assert done["images"] == [f"/v1/jobs/{job['id']}/images/{i}" for i in range(2)]
    for reply, data in zip(fetched, images, strict=True):
        assert reply.status_code == 200 and reply.content == data
        assert reply.headers["content-type"] == f"image/{fmt}"
    assert out_of_range.status_code == 404


def test_failed_job_reports_error(api: ApiServer, store: JobStore) -> None:
    job = submit(api)
    take(store, job["id"])
    store.finish(job["id"], JobStatus.failed, error=JobError(type="nan", message="NaN latents"))
    with api.client() as client:
        view = client.get(f"/v1/jobs/{job['id']}").json()
        cancel = client.delete(f"/v1/jobs/{job['id']}")
    assert view["status"] == "failed" and view["error"] == {"type": "nan", "message": "NaN latents"}
    assert cancel.status_code == 409


def test_events_stream_until_terminal(api: ApiServer, store: JobStore) -> None:
    job = submit(api, steps=3)

    def worker() -> None:
        time.sleep(0.3)
        take(store, job["id"])
        for step in range(1, 4):
            time.sleep(0.3)
            store.report_progress({job["id"]: (step, 3)})
        store.finish(job["id"], JobStatus.succeeded, images=[tiny_png()])

    thread = threading.Thread(target=worker)
    thread.start()
    with api.client() as client, client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = [
            json.loads(line.removeprefix("data: "))
            for line in stream.iter_lines()
            if line.startswith("data: ")
        ]
    thread.join()
    statuses = [event["status"] for event in events]
    assert statuses[0] == "queued" and statuses[-1] == "succeeded"
    assert "running" in statuses
    assert len({event["progress"]["step"] for event in events}) >= 3
    assert events[-1]["images"] == [f"/v1/jobs/{job['id']}/images/0"]


def test_unknown_job_is_404_and_expired_is_410(api: ApiServer, store: JobStore) -> None:
    job = submit(api)
    take(store, job["id"])
    store.finish(job["id"], JobStatus.succeeded, images=[tiny_png()])
    store.redis.delete(keys.job(job["id"]), keys.image(job["id"], 0))  # result TTL elapsed
    with api.client() as client:
        unknown = client.get(f"/v1/jobs/{uuid.uuid4()}")
        expired = client.get(f"/v1/jobs/{job['id']}")
        image = client.get(f"/v1/jobs/{job['id']}/images/0")
        bad_id = client.get("/v1/jobs/not..a..job")
    assert unknown.status_code == 404 and unknown.json()["type"].endswith(":not-found")
    assert expired.status_code == 410 and expired.json()["type"].endswith(":gone")
    assert image.status_code == 410
    assert bad_id.status_code in (404, 422)


def test_queued_past_queue_ttl_reports_expired(api: ApiServer, store: JobStore) -> None:
    job = submit(api)
    store.redis.delete(Job.key_for(job["id"]))  # rq's ttl dropped the queued job
    with api.client() as client:
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "expired"


def test_a_key_only_sees_its_own_jobs(api: ApiServer, store: JobStore) -> None:
    job = submit(api)
    take(store, job["id"])
    store.finish(job["id"], JobStatus.succeeded, images=[tiny_png()])
    unknown = f"/v1/jobs/{uuid.uuid4()}"
    with api.client(KEY_B) as other:
        replies = [
            other.get(f"/v1/jobs/{job['id']}"),
            other.get(f"/v1/jobs/{job['id']}/images/0"),
            other.get(f"/v1/jobs/{job['id']}/events"),
            other.delete(f"/v1/jobs/{job['id']}"),
        ]
        foreign_unknown = other.get(unknown)
    for reply in replies:
        assert reply.status_code == 404
        assert reply.json()["detail"] == foreign_unknown.json()["detail"]
    store.redis.delete(keys.job(job["id"]))
    with api.client(KEY_B) as other:
        assert other.get(f"/v1/jobs/{job['id']}").status_code == 404, "others never see 410"


def test_head_is_get_without_the_body(api: ApiServer, store: JobStore) -> None:
    """RFC 9110 9.3.2 (found from outside: `curl -I` got 405 on every route)."""
    job = submit(api)
    take(store, job["id"])
    store.finish(job["id"], JobStatus.succeeded, images=[tiny_png(3, 2)])
    queued = submit(api)["id"]  # its event stream would run until the job ends
    stable = [f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/images/0", "/healthz"]
    with api.client() as client:
        for path in [*stable, "/v1/models", "/metrics"]:
            get, head = client.get(path), client.head(path)
            assert (head.status_code, head.content) == (200, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path
            if path in stable:
                assert head.headers["content-length"] == str(len(get.content)), path
        start = time.monotonic()
        events = client.head(f"/v1/jobs/{queued}/events")
        assert time.monotonic() - start < 5 and events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        missing = client.head(f"/v1/jobs/{uuid.uuid4()}")
        post_only = client.head("/v1/txt2img")
        metrics = client.get("/metrics").text
    with api.client(None) as anonymous:
        unauthorized = anonymous.head(f"/v1/jobs/{job['id']}")
    assert (missing.status_code, missing.content) == (404, b"")
    assert post_only.status_code == 405 and "POST" in post_only.headers["allow"]
    assert unauthorized.status_code == 401
    assert 'method="HEAD",route="/v1/jobs/{job_id}/images/{index}",status="200"' in metrics
