"""GET /v1/jobs over real uvicorn + redis: the caller's jobs, newest first, paged and filtered,
with a simulated worker writing through JobStore."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobs import keys
from jobs.listing import SCAN_LIMIT
from jobs.record import JobError
from jobs.schema import JobStatus
from jobs.store import JobStore
from tests.api_harness import KEY_A, KEY_B, ApiServer, api_fixture, store_fixture, tiny_png  # noqa: F401
from tests.conftest import REPO
from tests.test_api_jobs import submit, take


def pages(api: ApiServer, query: str, key: str | None = None) -> list[list[dict]]:
    """Every page from `query`, following `next` until it is null."""
    found, url = [], f"/v1/jobs{query}"
    with api.client(*([key] if key else [])) as client:
        while url is not None:
            reply = client.get(url)
            assert reply.status_code == 200, reply.text
            found.append(reply.json()["jobs"])
            url = reply.json()["next"]
            assert len(found) < 50, "next never ends"
    return found


def test_newest_first_in_pages_each_job_once(api: ApiServer, store: JobStore) -> None:
    ids = [submit(api, seed=seed)["id"] for seed in range(5)]
    other = submit(api)  # KEY_A's too; KEY_B's next
    with api.client(KEY_B) as client:
        theirs = client.post("/v1/txt2img", json={"prompt": "a boat"}).json()["id"]
    listed = pages(api, "?limit=2")
    assert [len(page) for page in listed] == [2, 2, 2]
    assert [job["id"] for page in listed for job in page] == [other["id"], *reversed(ids)]
    first = listed[0][0]  # the same view as GET /v1/jobs/{id}
    with api.client() as client:
        assert first == client.get(f"/v1/jobs/{other['id']}").json()
    assert first["queue_position"] == 5 and first["links"]["self"] == f"/v1/jobs/{other['id']}"
    assert [job["id"] for page in pages(api, "", KEY_B) for job in page] == [theirs]


def test_status_filter_sees_each_job_as_get_does(api: ApiServer, store: JobStore) -> None:
    queued, running, done, failed, canceled = (submit(api)["id"] for _ in range(5))
    take(store, running)
    take(store, done)
    store.finish(done, JobStatus.succeeded, images=[tiny_png()])
    take(store, failed)
    store.finish(failed, JobStatus.failed, error=JobError(type="nan", message="NaN latents"))
    with api.client() as client:
        assert client.delete(f"/v1/jobs/{canceled}").json()["status"] == "canceled"

    def listed(query: str) -> list[tuple[str, str]]:
        return [(job["id"], job["status"]) for page in pages(api, query) for job in page]

    assert listed("?status=running") == [(running, "running")]
    assert listed("?status=queued&status=succeeded") == [(done, "succeeded"), (queued, "queued")]
    assert listed("?status=failed&status=canceled&limit=1") == [
        (canceled, "canceled"), (failed, "failed")]  # fmt: skip
    store.redis.delete(f"rq:job:{queued}")  # rq dropped it (queue TTL): GET would say expired
    assert listed("?status=queued") == []
    assert listed("?status=expired") == [(queued, "expired")]


def test_expired_records_leave_the_list_and_the_index(api: ApiServer, store: JobStore) -> None:
    kept, gone = submit(api)["id"], submit(api)["id"]
    store.redis.delete(keys.job(gone))  # the record's TTL ran out
    assert [job["id"] for page in pages(api, "") for job in page] == [kept]
    assert store.redis.zrange(keys.owner_jobs(store.get(kept).owner), 0, -1) == [kept.encode()]


def test_jobs_created_in_the_same_instant_are_each_listed_once(
    api: ApiServer, store: JobStore
) -> None:
    ids = [submit(api, seed=seed)["id"] for seed in range(4)]
    index = keys.owner_jobs(store.get(ids[0]).owner)
    instant = store.get(ids[0]).created_at
    store.redis.zadd(index, {job_id: instant for job_id in ids})  # one score for all
    listed = [job["id"] for page in pages(api, "?limit=1") for job in page]
    assert listed == sorted(ids, reverse=True)


def test_a_sparse_filter_reads_a_bounded_page_and_goes_on(api: ApiServer, store: JobStore) -> None:
    wanted = submit(api)["id"]  # the oldest; SCAN_LIMIT + 10 newer ones that do not match
    owner = store.get(wanted).owner
    created = store.get(wanted).created_at
    fields = store.redis.hgetall(keys.job(wanted))
    with store.redis.pipeline() as pipe:  # copies of the record: enough for the listing
        for n in range(SCAN_LIMIT + 10):
            job_id = f"00000000-0000-4000-8000-{n:012x}"
            pipe.hset(keys.job(job_id), mapping={**fields, b"status": b"succeeded"})
            pipe.zadd(keys.owner_jobs(owner), {job_id: created + 1 + n})
        pipe.execute()
    with api.client() as client:
        first = client.get("/v1/jobs?status=queued").json()
        assert first["jobs"] == [] and first["next"] is not None  # read SCAN_LIMIT, found none
        second = client.get(first["next"]).json()
    assert [job["id"] for job in second["jobs"]] == [wanted] and second["next"] is None


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("?limit=0", "limit", "greater than or equal to 1"),
        ("?limit=101", "limit", "less than or equal to 100"),
        ("?status=done", "status.0", "Input should be 'queued'"),
        ("?cursor=abc", "cursor", "not a cursor this server wrote"),
        ("?cursor=1.5_../../x", "cursor", "not a cursor this server wrote"),
    ],
)
def test_bad_parameters_are_422_naming_them(
    api: ApiServer, store: JobStore, query: str, field: str, message: str
) -> None:
    with api.client() as client:
        reply = client.get(f"/v1/jobs{query}")
    assert reply.status_code == 422
    (error,) = reply.json()["errors"]
    assert error["field"] == field and message in error["message"]


def test_listing_needs_a_key(api: ApiServer, store: JobStore) -> None:
    submit(api)
    with api.client(None) as client:
        reply = client.get("/v1/jobs")
    assert reply.status_code == 401 and "jobs" not in reply.json()


def client_jobs(
    api: ApiServer, *options: str, key: str = KEY_A, action: str = "jobs"
) -> subprocess.CompletedProcess:
    """`ldm-serve client ACTION` against `api` as a subprocess, with `key` in $LDM_API_KEY."""
    argv = [sys.executable, "-m", "cli.main", "client", action, "--url", api.url, *options]
    env = {**os.environ, "LDM_API_KEY": key}
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_client_jobs_prints_the_callers_jobs_newest_first(api: ApiServer, store: JobStore) -> None:
    older, newer = submit(api, prompt="a red circle")["id"], submit(api, prompt="a blue square")
    take(store, older)
    result = client_jobs(api, "--status", "running", "--status", "queued")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ID", "STATUS", "STEP", "CREATED", "(UTC)", "MODEL", "PROMPT"]
    assert [row.split()[:3] for row in rows] == [
        [newer["id"], "queued", "0/25"], [older, "running", "0/25"]]  # fmt: skip
    assert rows[0].endswith("a blue square") and rows[1].endswith("a red circle")
    one = client_jobs(api, "--limit", "1", "--status", "running")
    assert [row.split()[0] for row in one.stdout.splitlines()[1:]] == [older]
    wrong = client_jobs(api, key="nope")
    assert wrong.returncode == 1 and wrong.stderr.startswith("error: ")
    assert "Traceback" not in wrong.stderr


def test_client_cancel_says_what_became_of_each_job(api: ApiServer, store: JobStore) -> None:
    queued, running, done = (submit(api)["id"] for _ in range(3))
    take(store, running)
    take(store, done)
    store.finish(done, JobStatus.succeeded, images=[tiny_png()])
    unknown = "0123abcd-0000-4000-8000-000000000000"
    result = client_jobs(api, queued, running, done, unknown, action="cancel")
    assert result.returncode == 1  # two of the four could not be canceled
    assert result.stdout.splitlines() == [f"job {queued} canceled",
                                          f"job {running} stops at its next step"]  # fmt: skip
    assert result.stderr.splitlines() == [
        f"job {done} not canceled: HTTP 409: job is succeeded",
        f"job {unknown} not canceled: HTTP 404: no such job"]  # fmt: skip
    assert store.get(queued).status is JobStatus.canceled
    assert client_jobs(api, queued, action="cancel").returncode == 0  # canceled stays canceled
