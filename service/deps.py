"""Annotated dependency aliases for what the app keeps on `app.state` (set in main.py); the
key ring and the rate limiter have theirs beside their classes (auth.py, ratelimit.py).

Dependencies that never block are `async def`: FastAPI runs a sync one in the thread pool, a hop
per dependency per request, and a pool full of requests waiting on Redis would delay them all."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from jobs.idempotency import IdempotencyClaims
from jobs.store import JobStore
from service.metrics import ApiMetrics
from service.settings import ApiSettings


async def get_store(request: Request) -> JobStore:
    """The app's JobStore."""
    return request.app.state.store


async def get_settings(request: Request) -> ApiSettings:
    """The app's settings."""
    return request.app.state.settings


async def get_claims(request: Request) -> IdempotencyClaims:
    """The app's Idempotency-Key claims."""
    return request.app.state.claims


async def get_metrics(request: Request) -> ApiMetrics:
    """The app's Prometheus metrics."""
    return request.app.state.metrics


Store = Annotated[JobStore, Depends(get_store)]
Settings = Annotated[ApiSettings, Depends(get_settings)]
Claims = Annotated[IdempotencyClaims, Depends(get_claims)]
Metrics = Annotated[ApiMetrics, Depends(get_metrics)]


async def get_submit_deps(
    request: Request, store: Store, claims: Claims, metrics: Metrics
) -> tuple[ApiSettings, JobStore, IdempotencyClaims, ApiMetrics]:
    """What queueing a job needs (service/submission.py `enqueue`), in one dependency."""
    return request.app.state.settings, store, claims, metrics


SubmitDeps = Annotated[
    tuple[ApiSettings, JobStore, IdempotencyClaims, ApiMetrics], Depends(get_submit_deps)
]
