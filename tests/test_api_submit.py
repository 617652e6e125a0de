"""POST /v1/txt2img over real uvicorn + redis: 202, rq queue, idempotency, every bound -> 422."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.serializers import JSONSerializer

from jobs.schema import JobStatus
from jobs.store import JobStore
from tests.api_harness import ApiServer, api_fixture, store_fixture  # noqa: F401

PROBLEM = "application/problem+json"


def test_submit_answers_202_and_really_enqueues(api: ApiServer, store: JobStore) -> None:
    with api.client() as client:
        reply = client.post("/v1/txt2img", json={"prompt": "a red fox"})
    assert reply.status_code == 202, reply.text
    job = reply.json()
    assert reply.headers["location"] == f"/v1/jobs/{job['id']}" == job["links"]["self"]
    assert job["status"] == "queued" and job["queue_position"] == 0
    assert job["request"]["seed"] >= 0 and job["request"]["model"] == "default"
    assert job["progress"] == {"step": 0, "total": job["request"]["steps"]}
    assert store.queue("default").job_ids == [job["id"]]
    rq_job = Job.fetch(job["id"], connection=store.redis, serializer=JSONSerializer)
    assert rq_job.get_status() == RqStatus.QUEUED
    assert rq_job.func_name == "workers.tasks.txt2img"
    assert store.get(job["id"]).status is JobStatus.queued  # type: ignore[union-attr]


def test_seed_given_is_kept_and_absent_is_random(api: ApiServer, store: JobStore) -> None:
    with api.client() as client:
        fixed = client.post("/v1/txt2img", json={"prompt": "x", "seed": 42}).json()
        seeds = {client.post("/v1/txt2img", json={"prompt": "x"}).json()["request"]["seed"]}
        seeds.add(client.post("/v1/txt2img", json={"prompt": "x"}).json()["request"]["seed"])
    assert fixed["request"]["seed"] == 42
    assert len(seeds) == 2


def test_idempotency_same_body_same_job(api: ApiServer, store: JobStore) -> None:
    body = {"prompt": "idempotent", "steps": 10}
    headers = {"Idempotency-Key": "req-1"}
    with api.client() as client:
        first = client.post("/v1/txt2img", json=body, headers=headers)
        second = client.post("/v1/txt2img", json=body, headers=headers)
    assert first.status_code == 202 and second.status_code == 200
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert store.queue("default").count == 1


def test_idempotency_concurrent_retries_create_one_job(api: ApiServer, store: JobStore) -> None:
    def post(_: int) -> int:
        with api.client() as client:
            reply = client.post(
                "/v1/txt2img", json={"prompt": "race"}, headers={"Idempotency-Key": "r"}
            )
            return reply.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(post, range(8)))
    assert set(codes) <= {200, 202, 409} and codes.count(202) == 1
    assert store.queue("default").count == 1


def test_idempotency_other_body_is_422(api: ApiServer, store: JobStore) -> None:
    headers = {"Idempotency-Key": "req-2"}
    with api.client() as client:
        assert client.post("/v1/txt2img", json={"prompt": "a"}, headers=headers).status_code == 202
        reply = client.post("/v1/txt2img", json={"prompt": "b"}, headers=headers)
        other_key = client.post(
            "/v1/txt2img", json={"prompt": "b"}, headers={"Idempotency-Key": "z"}
        )
    assert reply.status_code == 422 and reply.headers["content-type"] == PROBLEM
    assert reply.json()["type"].endswith(":idempotency-conflict")
    assert other_key.status_code == 202
    assert store.queue("default").count == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 201}, "prompt"),
        ({"prompt": "x", "negative_prompt": "y" * 201}, "negative_prompt"),
        ({"prompt": "x", "width": 60}, "width"),
        ({"prompt": "x", "width": 65}, "width"),
        ({"prompt": "x", "height": 4096}, "height"),
        ({"prompt": "x", "width": 128, "height": 256}, "height"),  # > LDM_MAX_PIXELS
        ({"prompt": "x", "steps": 0}, "steps"),
        ({"prompt": "x", "steps": 51}, "steps"),
        ({"prompt": "x", "guidance_scale": -1}, "guidance_scale"),
        ({"prompt": "x", "guidance_scale": 31}, "guidance_scale"),
        ({"prompt": "x", "eta": 1.5}, "eta"),
        ({"prompt": "x", "num_images": 0}, "num_images"),
        ({"prompt": "x", "num_images": 4}, "num_images"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "sampler": "lms"}, "sampler"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": "x", "model": "../../etc/passwd"}, "model"),
        ({"prompt": "x", "model": "other"}, "model"),
        ({"prompt": "x", "steps": "many"}, "steps"),
        ({"prompt": "x", "unknown": 1}, "unknown"),
        ({"prompt": "nul\u0000byte"}, "prompt"),
    ],
)
def test_each_bound_is_422_naming_the_field(
    api: ApiServer, store: JobStore, body: dict[str, object], field: str
) -> None:
    with api.client() as client:
        reply = client.post("/v1/txt2img", json=body)
    assert reply.status_code == 422, reply.text
    assert reply.headers["content-type"] == PROBLEM
    problem = reply.json()
    assert problem["type"] == "urn:ldm-serve:problem:validation" and problem["status"] == 422
    assert field in problem["detail"]
    assert any(error["field"] == field for error in problem["errors"])
    assert "Traceback" not in reply.text
    assert store.queue("default").count == 0


@pytest.mark.parametrize(
    ("literal", "field"),
    [("NaN", "guidance_scale"), ("Infinity", "guidance_scale"), ("-Infinity", "eta")],
)
def test_nan_and_infinity_are_422_as_not_finite(
    api: ApiServer, store: JobStore, literal: str, field: str
) -> None:
    """Python's JSON parser reads these literals; NaN failed `<= 30` and was told it was too big."""
    with api.client() as client:
        reply = client.post("/v1/txt2img", content=f'{{"prompt": "x", "{field}": {literal}}}',
                            headers={"content-type": "application/json"})  # fmt: skip
    assert reply.status_code == 422, reply.text
    assert reply.json()["errors"] == [
        {"field": field, "message": "Input should be a finite number"}
    ]
    assert store.queue("default").count == 0


def test_values_at_the_bounds_are_accepted(api: ApiServer, store: JobStore) -> None:
    body = {
        "prompt": "x" * 200,
        "width": 128,
        "height": 128,
        "steps": 50,
        "num_images": 3,
        "guidance_scale": 30,
        "sampler": "dpmpp_2m",
        "output_format": "webp",
        "model": "default",
    }
    with api.client() as client:
        assert client.post("/v1/txt2img", json=body).status_code == 202


def test_malformed_json_is_400(api: ApiServer, store: JobStore) -> None:
    with api.client() as client:
        reply = client.post(
            "/v1/txt2img", content=b'{"prompt": ', headers={"content-type": "application/json"}
        )
    assert reply.status_code == 400 and reply.json()["type"].endswith(":malformed-json")


def test_oversized_body_is_413_by_header_and_by_stream(api: ApiServer, store: JobStore) -> None:
    with api.client() as client:
        declared = client.post("/v1/txt2img", json={"prompt": "x" * 5000})
        streamed = client.post(
            "/v1/txt2img",
            content=(b"x" * 1024 for _ in range(8)),  # chunked: no Content-Length
            headers={"content-type": "application/json"},
        )
    for reply in (declared, streamed):
        assert reply.status_code == 413
        assert reply.headers["content-type"] == PROBLEM
        assert reply.json()["type"].endswith(":body-too-large")
    assert store.queue("default").count == 0


def test_huge_content_length_is_refused_without_reading(api: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/txt2img HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer key-a-0123456789\r\nContent-Length: 10000000000\r\n\r\n"
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 413")
