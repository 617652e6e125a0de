"""/v1/jobs: the caller's jobs; /v1/jobs/{id}: status, cancellation, server-sent events and
image bytes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from redis.exceptions import RedisError

from jobs.listing import CURSOR_PATTERN, Cursor
from jobs.record import JobRecord
from jobs.schema import JobStatus
from jobs.store import JobStore
from service.auth import Owner
from service.deps import Store
from service.errors import Problem, redis_unavailable
from service.openapi import problem_responses
from service.redis_client import with_fresh_deadline
from service.signed_urls import OwnerUnlessSigned, SignedUrl, app_url_key
from service.submission import invalid
from service.views import JobList, JobView, job_view

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"])

JobId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9a-f-]+$")]
# SSE: how often the record is polled and how often an idle stream gets a keep-alive comment.
POLL_S = 0.25
KEEPALIVE_S = 15.0


def _not_found() -> Problem:
    return Problem(404, "not-found", "Not found", "no such job")


def load_job(store: JobStore, job_id: str, owner: str | None) -> JobRecord:
    """The caller's job (owner None: a signed URL's, whoever owns it), reconciled with rq; 404 if
    unknown or someone else's, 410 if expired."""
    record = store.get(job_id)
    if record is None or (owner is not None and record.owner != owner):
        expired_for = store.tombstone(job_id) if record is None else None
        if expired_for is not None and owner in (None, expired_for):
            raise Problem(410, "gone", "Gone", "the job and its images expired")
        raise _not_found()
    return store.reconcile(record)


def _view(store: JobStore, record: JobRecord) -> JobView:
    position = store.queue_position(record) if record.status is JobStatus.queued else None
    return job_view(record, position)


@router.get(
    "/v1/jobs",
    response_model=JobList,
    responses=problem_responses(401, 422, 503),
    summary="The caller's jobs, newest first",
)
def list_jobs(
    request: Request,
    owner: Owner,
    store: Store,
    statuses: Annotated[
        list[JobStatus],
        Query(alias="status", description="only these statuses: `?status=queued&status=running`"),
    ] = [],  # noqa: B006 (FastAPI copies a default; a tuple is not a list in its schema)
    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
    cursor: Annotated[
        str | None,
        Query(  # the pattern is declared; the check is ours, with a message that says what to do
            description="where the previous page ended (in its `next`)",
            json_schema_extra={"pattern": CURSOR_PATTERN, "maxLength": 100},
        ),
    ] = None,
) -> JobList:
    """The caller's jobs that Redis still holds (each until `LDM_RESULT_TTL` after it ends), newest
    first, a page at a time: follow `next` until it is null. A page with a status filter may hold
    fewer than `limit` jobs and still have a `next` (it reads at most 1000 jobs)."""
    try:
        after = Cursor.decode(cursor) if cursor is not None else None
    except ValueError as exc:
        raise invalid("cursor", str(exc)) from None
    page = store.owner_jobs.page(owner, limit=limit, statuses=statuses, after=after,
                                 refresh=store.reconcile)  # fmt: skip
    following = None
    if page.next is not None:  # the same filters and limit, from where this page ended
        query = [("limit", limit), *(("status", value.value) for value in statuses)]
        following = f"{request.url.path}?{urlencode([*query, ('cursor', page.next.encode())])}"
    return JobList(jobs=[_view(store, record) for record in page.records], next=following)


@router.get(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses=problem_responses(401, 404, 410, 422, 503),
    summary="Job status and progress",
)
def get_job(job_id: JobId, owner: Owner, store: Store) -> JobView:
    """Status, progress, queue position, timings, resolved request, image URLs, error."""
    return _view(store, load_job(store, job_id, owner))


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobView,
    responses={
        202: {"description": "Running job: it stops at its next step", "model": JobView},
        **problem_responses(401, 404, 409, 410, 422, 503),
    },
    summary="Cancel a job",
)
def cancel_job(job_id: JobId, owner: Owner, store: Store, response: Response) -> JobView:
    """Queued: canceled at once and never runs. Running: stops at the next step (202)."""
    record = load_job(store, job_id, owner)
    if record.status.terminal and record.status is not JobStatus.canceled:
        raise Problem(409, "job-finished", "Job already finished", f"job is {record.status}")
    store.request_cancel(job_id)
    record = load_job(store, job_id, owner)
    if record.status is JobStatus.running:
        response.status_code = status.HTTP_202_ACCEPTED
    logger.info("cancel requested for job %s (now %s)", job_id, record.status)
    return _view(store, record)


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **problem_responses(401, 404, 410, 422, 503),
    },
    summary="Server-sent events until the job ends",
)
def job_events(job_id: JobId, owner: Owner, store: Store) -> StreamingResponse:
    """`event: job` with the job JSON whenever status or progress changes; ends when terminal."""
    first = load_job(store, job_id, owner)
    frame = _frame(first, store)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    stream = _events(store, first, frame)
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


def _frame(record: JobRecord, store: JobStore) -> str:
    data = _view(store, record).model_dump_json(by_alias=True)
    return f"event: job\ndata: {data}\n\n"


async def _events(store: JobStore, record: JobRecord, first: str) -> AsyncIterator[str]:
    """Poll the record (in a thread, each poll its own Redis deadline); emit on change; stop
    after a terminal status."""
    yield first
    seen = (record.status, record.progress_step)
    last_sent = time.monotonic()
    while not record.status.terminal:
        await anyio.sleep(POLL_S)
        try:
            current = await anyio.to_thread.run_sync(with_fresh_deadline, _refresh, store, record)
        except RedisError as exc:
            logger.warning("event stream for %s lost redis: %s", record.id, exc)
            yield f"event: error\ndata: {json.dumps(redis_unavailable().body())}\n\n"
            return
        if current is None:
            yield f"event: job\ndata: {json.dumps({'id': record.id, 'status': 'expired'})}\n\n"
            return
        record = current
        if (record.status, record.progress_step) != seen:
            seen = (record.status, record.progress_step)
            last_sent = time.monotonic()
            yield await anyio.to_thread.run_sync(with_fresh_deadline, _frame, record, store)
        elif time.monotonic() - last_sent > KEEPALIVE_S:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"


def _refresh(store: JobStore, record: JobRecord) -> JobRecord | None:
    current = store.get(record.id)
    return store.reconcile(current) if current is not None else None


@router.get(
    "/v1/jobs/{job_id}/images/{index}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        **problem_responses(401, 404, 409, 410, 422, 503),
    },
    summary="Image bytes",
)
def get_image(
    request: Request,
    job_id: JobId,
    index: Annotated[int, Path(ge=0, le=1024)],
    caller: OwnerUnlessSigned,
    store: Store,
) -> Response:
    """The encoded image with its content type (png, jpeg or webp as requested); with a signed
    URL's `expires` and `signature` (OpenAI's response_format=url), no API key is needed."""
    if isinstance(caller, SignedUrl):  # whoever holds it may read this image until it expires
        caller.check(app_url_key(request), job_id, index)
    record = load_job(store, job_id, None if isinstance(caller, SignedUrl) else caller)
    if index >= record.request.num_images:
        raise Problem(404, "not-found", "Not found", f"index: job has {record.request.num_images}")
    if record.status is not JobStatus.succeeded:
        raise Problem(409, "not-ready", "Images not ready", f"job is {record.status}")
    data = store.get_image(job_id, index)
    if data is None:
        raise Problem(410, "gone", "Gone", "the image expired")
    fmt = record.request.output_format
    headers = {
        "Cache-Control": "private, max-age=3600",
        "Content-Disposition": f'inline; filename="{job_id}-{index}.{fmt.value}"',
    }
    return Response(content=data, media_type=fmt.media_type, headers=headers)
