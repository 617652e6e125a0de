"""RFC 9457 problem details: every error is application/problem+json with a stable `type`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError as RedisOutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from jobs.idempotency import IdempotencyConflict, IdempotencyExpired, IdempotencyInFlight
from jobs.quota import ActiveLimitError, CostLimitError
from jobs.store import QueueFullError
from service.redis_client import RedisCircuitOpen

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:ldm-serve:problem:"

# HTTP status -> stable problem slug for errors raised by the framework itself.
_STATUS_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    408: "request-timeout",
    410: "gone",
    413: "body-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
}


class FieldError(BaseModel):
    """One offending request field and what is wrong with it."""

    field: str = Field(description="dotted path of the field, e.g. `width` or `body`")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: the body of every error (application/problem+json)."""

    type: str = Field(
        description="stable URI of the problem, e.g. urn:ldm-serve:problem:validation"
    )
    title: str = Field(description="short summary of the problem type")
    status: int = Field(description="the HTTP status code")
    detail: str = Field(description="what went wrong with this request, naming the field")
    instance: str | None = Field(None, description="path of the request")
    errors: list[FieldError] | None = Field(None, description="every offending field (422)")


class Problem(Exception):
    """An error the API answers with; raise it from routes and dependencies."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.errors = list(errors or [])

    def body(self, instance: str = "") -> dict[str, Any]:
        """The RFC 9457 JSON object (the one rendering of every problem: responses, SSE)."""
        details = ProblemDetails(
            type=TYPE_PREFIX + self.slug,
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance or None,
            errors=[FieldError.model_validate(error) for error in self.errors] or None,
        )
        return details.model_dump(exclude_none=True)


OPENAI_PREFIX = "/v1/images/"  # the OpenAI Images API dialect (service/routes/openai_images.py)
OPENAI_TYPES = {401: "authentication_error", 429: "rate_limit_error", 404: "not_found_error"}


def problem_response(problem: Problem, instance: str = "") -> JSONResponse:
    """Render a Problem as application/problem+json, or in OpenAI's error shape on its routes
    (validation there is a 400, as OpenAI answers, so its SDKs raise BadRequestError)."""
    if instance.startswith(OPENAI_PREFIX):
        status = 400 if problem.status == 422 else problem.status
        other = "server_error" if status >= 500 else "invalid_request_error"
        kind = OPENAI_TYPES.get(status, other)
        error = {"message": problem.detail, "type": kind, "code": problem.slug,
                 "param": problem.errors[0]["field"] if problem.errors else None}  # fmt: skip
        return JSONResponse({"error": error}, status_code=status, headers=problem.headers)
    return JSONResponse(
        problem.body(instance),
        status_code=problem.status,
        headers=problem.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def field_path(loc: Sequence[str | int]) -> str:
    """Dotted field path without the request part: ("body", "width") -> "width"."""
    parts = [str(part) for part in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_problem(exc: RequestValidationError) -> Problem:
    """422 naming every offending field (400 when the body is not JSON at all)."""
    errors = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        errors.append({"field": field_path(error.get("loc", ())), "message": message})
    if any(error.get("type") == "json_invalid" for error in exc.errors()):
        return Problem(400, "malformed-json", "Malformed JSON", "request body is not valid JSON")
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return Problem(422, "validation", "Invalid request", detail, errors=errors)


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """`Allow` of a 405: the methods some route serves at this path (Starlette's 405 names only
    the first matching route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    return ", ".join(allowed)


def redis_unavailable(retry_after_s: int = 1) -> Problem:
    """503 while Redis cannot be reached."""
    return Problem(
        503,
        "redis-unavailable",
        "Service unavailable",
        "the job store is unreachable; retry later",
        headers={"Retry-After": str(retry_after_s)},
    )


def body_too_large(max_bytes: int) -> Problem:
    """413 for a body over the limit (sent by the body-size middleware)."""
    return Problem(
        413, "body-too-large", "Request body too large", f"request body exceeds {max_bytes} bytes"
    )


def refusal_problem(exc: Exception, retry_after_s: int) -> Problem:
    """The problem a job-layer refusal answers with (quota, queue, Idempotency-Key)."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, ActiveLimitError):
        detail = (
            f"concurrency limit of {exc.limit} queued or running jobs per API key reached; "
            "retry when one finishes or cancel one"
        )
        return Problem(429, "concurrency-limited", "Too many active jobs", detail, headers=retry)
    if isinstance(exc, CostLimitError):
        detail = (
            f"in-flight cost budget of {exc.budget} pixel-steps per API key reached "
            "(LDM_MAX_COST_PER_KEY); retry when a job finishes"
        )
        return Problem(429, "cost-limited", "Too much work in flight", detail, headers=retry)
    if isinstance(exc, QueueFullError):
        detail = f"the queue for model {exc.model!r} is full; retry later"
        return Problem(503, "queue-full", "Queue full", detail, headers=retry)
    if isinstance(exc, IdempotencyConflict):
        detail = "Idempotency-Key was already used with a different request body"
        return Problem(422, "idempotency-conflict", "Idempotency-Key reused", detail)
    if isinstance(exc, IdempotencyExpired):
        return Problem(410, "gone", "Gone", "the job created with this Idempotency-Key expired")
    assert isinstance(exc, IdempotencyInFlight), exc
    detail = "a request with this Idempotency-Key is still being processed; retry shortly"
    return Problem(409, "idempotency-in-flight", "Request in progress", detail,
                   headers={"Retry-After": "1"})  # fmt: skip


REFUSALS = (
    ActiveLimitError,
    CostLimitError,
    QueueFullError,
    IdempotencyConflict,
    IdempotencyExpired,
    IdempotencyInFlight,
)


def install_handlers(app: FastAPI, retry_after_s: int) -> None:
    """Register problem+json handlers for our, framework and unexpected errors."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        request.state.reject_reason = exc.slug
        return problem_response(exc, request.url.path)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        request.state.reject_reason = "validation"
        return problem_response(validation_problem(exc), request.url.path)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        slug = _STATUS_SLUGS.get(exc.status_code, "error")
        title = slug.replace("-", " ").capitalize()
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
        problem = Problem(exc.status_code, slug, title, str(exc.detail), headers=headers)
        return problem_response(problem, request.url.path)

    async def on_refusal(request: Request, exc: Exception) -> JSONResponse:
        problem = refusal_problem(exc, retry_after_s)
        request.state.reject_reason = problem.slug
        return problem_response(problem, request.url.path)

    async def on_redis(request: Request, exc: Exception) -> JSONResponse:
        # The breaker logs its own transitions; a refusal while it is open is routine.
        level = logging.DEBUG if isinstance(exc, RedisCircuitOpen) else logging.WARNING
        logger.log(level, "redis unavailable on %s %s: %s", request.method, request.url.path, exc)
        request.state.reject_reason = "redis-unavailable"
        return problem_response(redis_unavailable(retry_after_s), request.url.path)

    async def on_redis_full(request: Request, exc: Exception) -> JSONResponse:
        logger.error("redis maxmemory reached (noeviction): refusing writes: %s", exc)
        request.state.reject_reason = "redis-full"
        problem = Problem(
            503,
            "redis-full",
            "Service unavailable",
            "the job store is full; retry later",
            headers={"Retry-After": str(retry_after_s)},
        )
        return problem_response(problem, request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        problem = Problem(500, "internal", "Internal error", "unexpected server error")
        return problem_response(problem, request.url.path)

    app.add_exception_handler(Problem, on_problem)
    for refusal in REFUSALS:
        app.add_exception_handler(refusal, on_refusal)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RedisConnectionError, on_redis)
    app.add_exception_handler(RedisTimeoutError, on_redis)
    app.add_exception_handler(RedisOutOfMemoryError, on_redis_full)
    app.add_exception_handler(Exception, on_unexpected)
