"""FastAPI application factory; `service.main:app` is what uvicorn serves."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from jobs.idempotency import IdempotencyClaims
from jobs.store import JobStore
from jobs.version import VERSION
from jobs.webhooks import WebhookSecrets
from service.auth import KeyRing
from service.bodysize import BodySizeLimit
from service.errors import install_handlers
from service.head import HeadAsGet
from service.metrics import ApiMetrics, MetricsMiddleware
from service.openapi import install_problem_schema
from service.ratelimit import RateLimiter
from service.redis_client import RedisDeadline, connect_redis
from service.routes import (
    a1111,
    health,
    image_tasks,
    jobs,
    models,
    openai_images,
    playground,
    sample,
    txt2img,
    webhooks,
)
from service.routes.image_tasks import IMAGE_TASK_PATHS
from service.routes.openai_images import OPENAI_PATHS
from service.settings import ApiSettings
from service.webhooks import EVENTS_HEADER, URL_HEADER

logger = logging.getLogger(__name__)

# Cross-origin browser calls (LDM_CORS_ORIGINS): what the routes read and what clients need back.
CORS_METHODS = ("GET", "HEAD", "POST", "DELETE")
CORS_REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", URL_HEADER,
                        EVENTS_HEADER)  # fmt: skip
CORS_EXPOSED_HEADERS = ("Location", "Retry-After", "Idempotent-Replayed", "Content-Disposition")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Check Redis's eviction policy at startup; close the client at shutdown."""
    app.state.redis_policy_ok = health.check_eviction_policy(app.state.store)
    yield
    app.state.store.redis.close()


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the API for `settings` (default: from the environment)."""
    settings = settings or ApiSettings()
    redis = connect_redis(
        settings.redis_url, timeout_s=settings.redis_timeout_s, cooldown_s=settings.redis_cooldown_s
    )
    store = JobStore(
        redis,
        result_ttl=settings.result_ttl,
        job_timeout=settings.job_timeout,
        queue_ttl=settings.queue_ttl,
    )
    app = FastAPI(
        title="ldm-serve",
        version=VERSION,
        summary="Latent Diffusion inference: queue txt2img jobs, poll or stream, fetch images.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.keyring = KeyRing(settings.keys)
    app.state.rate_limiter = RateLimiter(redis, settings.rate_limit)
    app.state.metrics = ApiMetrics(store, settings.models)
    app.state.webhook_secrets = WebhookSecrets(redis, settings.webhook_secret)
    # Claims live as long as the job they name can be read back.
    idempotency_ttl = settings.queue_ttl + settings.job_timeout + settings.result_ttl
    app.state.claims = IdempotencyClaims(store, ttl=idempotency_ttl)
    install_handlers(app, settings.retry_after_s)
    install_problem_schema(app)
    app.include_router(txt2img.build_router(settings))
    app.include_router(image_tasks.build_router(settings))
    app.include_router(sample.build_router(settings))
    app.include_router(openai_images.build_router(settings))
    app.include_router(a1111.build_router(settings))
    app.include_router(jobs.router)
    app.include_router(models.router)
    app.include_router(webhooks.router)
    app.include_router(health.router)
    app.include_router(playground.router)
    # Outermost last: metrics see every response, including the 413s of the body limit; the
    # Redis deadline starts once the body is in (a slow upload is the read deadline's business).
    app.add_middleware(HeadAsGet)
    app.add_middleware(RedisDeadline, budget_s=settings.redis_deadline_s)
    uploads = [*IMAGE_TASK_PATHS, *OPENAI_PATHS, f"{a1111.PREFIX}/img2img"]
    image_routes = dict.fromkeys(uploads, settings.max_image_body_bytes)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, per_path=image_routes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_allowed:  # outermost: preflights and every answer (errors too) carry it
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_allowed),
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_REQUEST_HEADERS),
            expose_headers=list(CORS_EXPOSED_HEADERS),
            max_age=600,
        )
    logger.info(
        "api ready to serve model=%s auth=%s", settings.model_name, app.state.keyring.enabled
    )
    return app


app = create_app()
