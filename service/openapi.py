"""The OpenAPI document states every error a route answers with, as application/problem+json."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from service.errors import PROBLEM_MEDIA_TYPE, ProblemDetails

REF_PREFIX = "#/components/schemas/"
PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": REF_PREFIX + "ProblemDetails"}}}

# What each error status means anywhere in this API (a route lists the ones it can answer).
DESCRIPTIONS = {
    400: "Malformed JSON body",
    401: "Missing or invalid API key (`Authorization: Bearer <key>`, when keys are configured), "
    "or a signed image URL's signature invalid or expired",
    404: "No such job for this API key, or no such image index",
    409: "Conflict: the job already finished (cancel), its images are not ready yet, or a request "
    "with this Idempotency-Key is still in progress",
    410: "Gone: the job, its image or the job of this Idempotency-Key expired",
    413: "Request body larger than LDM_MAX_BODY_BYTES",
    422: "Invalid request: `errors` names each offending field",
    429: "Rate limit or per-key concurrency limit reached; retry after Retry-After seconds",
    500: "The job failed or was canceled (the synchronous dialects)",
    503: "Redis unreachable or full, queue full, or (readiness) no live worker; retry after "
    "Retry-After seconds",
    504: "The job did not finish within LDM_SYNC_TIMEOUT (the synchronous dialects)",
}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "required": True, "schema": {"type": "string"}}


RETRY_AFTER = {"Retry-After": _header("seconds to wait before retrying")}
HEADERS = {
    401: {"WWW-Authenticate": _header('`Bearer realm="ldm-serve"`')},
    429: RETRY_AFTER,
    503: RETRY_AFTER,
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a route that can answer each of `statuses` with a problem."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        response: dict[str, Any] = {"description": DESCRIPTIONS[status]}
        if status in HEADERS:
            response["headers"] = HEADERS[status]
        responses[status] = response
    return responses


def problem_json(schema: dict[str, Any]) -> dict[str, Any]:
    """Give every 4xx/5xx response the problem+json body; drop FastAPI's `{detail}` 422 schema."""
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for code, response in operation.get("responses", {}).items():
                if str(code)[0] in "45":
                    response["content"] = PROBLEM_CONTENT
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    problem = ProblemDetails.model_json_schema(ref_template=REF_PREFIX + "{model}")
    schemas.update(problem.pop("$defs", {}))
    schemas["ProblemDetails"] = problem
    return schema


def install_problem_schema(app: FastAPI) -> None:
    """Serve FastAPI's generated document rewritten by `problem_json` (built once)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = problem_json(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
