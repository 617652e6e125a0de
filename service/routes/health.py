"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from jobs.store import JobStore
from jobs.version import VERSION
from service.deps import Metrics, Settings, Store
from service.errors import Problem
from service.openapi import problem_responses

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


def eviction_policy(store: JobStore) -> str:
    """Redis maxmemory-policy (from INFO, which needs no CONFIG permission)."""
    return str(store.redis.info("memory").get("maxmemory_policy", "unknown"))


def check_eviction_policy(store: JobStore) -> bool:
    """Log loudly unless Redis runs with noeviction (queued jobs could silently vanish)."""
    try:
        policy = eviction_policy(store)
    except RedisError as exc:
        logger.warning("redis unreachable at startup (%s); /readyz will report it", exc)
        return False
    if policy != "noeviction":
        logger.critical(
            "REDIS maxmemory-policy is %r, not 'noeviction': queued jobs and results can be "
            "evicted silently. Refusing readiness until it is fixed.",
            policy,
        )
        return False
    return True


@router.get("/healthz", summary="Process is up, and its release")
async def healthz() -> dict[str, str]:
    """Always 200 while the process serves HTTP: on the event loop, never touching Redis."""
    return {"status": "ok", "version": VERSION}


@router.get(
    "/readyz",
    responses=problem_responses(503),
    summary="Redis reachable and a worker alive for the default model",
)
def readyz(store: Store, settings: Settings) -> dict[str, object]:
    """200 when Redis answers with noeviction and >= 1 live worker serves the default model
    (an unreachable Redis is 503 redis-unavailable, as on every route)."""
    retry = {"Retry-After": str(settings.retry_after_s)}
    policy = eviction_policy(store)
    workers = store.fleet.live_workers(settings.model_name)
    if policy != "noeviction":
        detail = f"redis maxmemory-policy is {policy!r}; it must be 'noeviction'"
        raise Problem(503, "not-ready", "Not ready", detail, headers=retry)
    if workers < 1:
        detail = f"no live worker for model {settings.model_name!r}"
        raise Problem(503, "not-ready", "Not ready", detail, headers=retry)
    return {"status": "ready", "model": settings.model_name, "workers": workers}


@router.get("/metrics", include_in_schema=False)
def metrics(api_metrics: Metrics) -> Response:
    """Prometheus text exposition of this app's registry."""
    body = generate_latest(api_metrics.registry)
    return Response(content=body, media_type=CONTENT_TYPE_LATEST)
