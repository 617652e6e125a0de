"""A small ldm-serve HTTP client on the standard library (urllib), for scripts and the CLI."""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Sequence
from typing import Any

TERMINAL = {"succeeded", "failed", "canceled", "expired"}
PASSING = {502, 503, 504}  # the API or its Redis is briefly away: a queued job is kept


class ApiError(RuntimeError):
    """The API answered with an error (problem+json detail in the message)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status


class ApiUnreachable(ConnectionError):
    """No HTTP answer from the API's URL at all (refused, unknown host, timed out)."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(f"cannot connect to {url}: {describe(reason)}")
        self.url = url


def describe(reason: object) -> str:
    """A connection failure in words ("connection refused"), not an errno tuple."""
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror[:1].lower() + reason.strerror[1:]
    return str(reason)


def passing(error: ApiError | ApiUnreachable) -> bool:
    """Whether the error is an outage that passes: a 502-504, or no answer at all."""
    return isinstance(error, ApiUnreachable) or error.status in PASSING


class JobFailed(RuntimeError):
    """The job ended without images."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {}
        super().__init__(
            f"job {job['id']} {job['status']}: {error.get('type', '')} {error.get('message', '')}"
        )
        self.job = job


class Client:
    """Submit txt2img jobs, poll them and fetch their images."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 30.0) -> None:  # fmt: skip
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> tuple[bytes, str]:  # fmt: skip
        """Send one request; returns (body, content type) or raises ApiError."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            payload = exc.read()
            try:
                detail = json.loads(payload).get("detail", payload.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = payload.decode(errors="replace")
            raise ApiError(exc.code, str(detail)) from None
        except urllib.error.URLError as exc:
            raise ApiUnreachable(self.url, exc.reason) from None
        except (ConnectionError, TimeoutError) as exc:  # reset or timed out after connecting
            raise ApiUnreachable(self.url, exc) from None

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        payload, _ = self._request(method, path, body, headers)
        result: dict[str, Any] = json.loads(payload)
        return result

    def submit(
        self,
        prompt: str,
        idempotency_key: str | None = None,
        task: str = "txt2img",
        retry_s: float = 0.0,
        **params: Any,
    ) -> dict[str, Any]:
        """POST /v1/{task} (txt2img, img2img, inpaint, upscale, sample; image bytes as base64);
        returns the queued job. With `retry_s`, a 502-504 (the API is there, its Redis is away)
        is retried for that long under one Idempotency-Key (a random one unless given), so a
        retry after a lost answer gets the job the first attempt made, never a second. No answer
        at all is not retried: a mistyped URL should fail at once."""
        if retry_s > 0 and not idempotency_key:
            idempotency_key = str(uuid.uuid4())
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        body = {"prompt": prompt, **{k: v for k, v in params.items() if v is not None}}
        for name in ("init_image", "mask_image", "image"):
            if isinstance(body.get(name), bytes):
                body[name] = base64.b64encode(body[name]).decode()
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return self._json("POST", f"/v1/{task}", body, headers)  # fmt: skip
            except ApiError as error:
                if not passing(error) or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def job(self, job_id: str) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, statuses: Sequence[str] = (), limit: int = 20) -> list[dict[str, Any]]:
        """GET /v1/jobs: up to `limit` of the caller's jobs, newest first, following `next`."""
        pairs = [("limit", str(min(limit, 100))), *(("status", value) for value in statuses)]
        query = urllib.parse.urlencode(pairs)
        found: list[dict[str, Any]] = []
        path: str | None = f"/v1/jobs?{query}"
        while path is not None and len(found) < limit:
            page = self._json("GET", path)
            found += page["jobs"]
            path = page["next"]
        return found[:limit]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}."""
        return self._json("DELETE", f"/v1/jobs/{job_id}")

    def image(self, job_id: str, index: int = 0) -> bytes:
        """GET /v1/jobs/{id}/images/{index}: the encoded image bytes."""
        payload, _ = self._request("GET", f"/v1/jobs/{job_id}/images/{index}")
        return payload

    def wait(self, job_id: str, timeout: float = 600.0, poll: float = 0.25) -> dict[str, Any]:
        """Poll until the job ends; returns its final state. An outage on the way (a 502-504,
        or no answer while `ldm-serve up` restarts the API: the job's id proves the URL) is
        polled through until `timeout`: the job is safe in Redis and the worker carries on."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = self.job(job_id)
            except (ApiError, ApiUnreachable) as error:
                if not passing(error) or time.monotonic() > deadline:
                    raise
                time.sleep(max(poll, 1.0))
                continue
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:g}s")
            time.sleep(poll)

    def txt2img(self, prompt: str, timeout: float = 600.0, **params: Any) -> list[bytes]:
        """Submit, wait and download every image of one request (task= for image tasks); a
        passing outage is waited out on the way (see `submit` and `wait`)."""
        job = self.submit(prompt, retry_s=timeout, **params)
        job = self.wait(job["id"], timeout=timeout)
        if job["status"] != "succeeded":
            raise JobFailed(job)
        return [self.image(job["id"], index) for index in range(len(job["images"]))]


def add_connection_options(action: argparse.ArgumentParser) -> None:
    """--url and --api-key, for every `ldm-serve client` action."""
    action.add_argument(
        "--url",
        default=os.environ.get("LDM_URL", "http://127.0.0.1:8000"),
        help="the API (default: $LDM_URL, else http://127.0.0.1:8000)",
    )
    action.add_argument(
        "--api-key",
        default=os.environ.get("LDM_API_KEY"),
        help="sent as a Bearer token (default: $LDM_API_KEY)",
    )
