"""Real uvicorn API processes for the API tests, plus helpers that act like a worker would."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from jobs.store import JobStore
from tests.conftest import REPO, RedisServer, free_port

KEY_A = "key-a-0123456789"
KEY_B = "key-b-9876543210"
# Small bounds so every 422 test is cheap; auth on with two keys.
DEFAULT_ENV = {
    "LDM_API_KEYS": f"{KEY_A},{KEY_B}",
    "LDM_MAX_PIXELS": str(128 * 128),
    "LDM_DEFAULT_SIZE": "64",
    "LDM_MAX_STEPS": "50",
    "LDM_MAX_IMAGES": "3",
    "LDM_MAX_PROMPT_CHARS": "200",
    "LDM_MAX_BODY_BYTES": "4096",
    "LDM_RATE_LIMIT": "0",
    "LDM_RESULT_TTL": "60",
}


def auth(key: str = KEY_A) -> dict[str, str]:
    """Authorization header for an API key."""
    return {"Authorization": f"Bearer {key}"}


class ApiServer:
    """`uvicorn service.main:app` in a subprocess on a free port."""

    def __init__(self, redis_url: str, env: Mapping[str, str] | None = None) -> None:
        self.redis_url = redis_url
        self.env = {**DEFAULT_ENV, **(env or {})}
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.env, "REDIS_URL": self.redis_url, "PYTHONPATH": str(REPO)}
        args = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--log-level", "warning"]
        self.process = subprocess.Popen(args, cwd=REPO, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"uvicorn exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        pytest.fail("uvicorn did not become healthy")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None

    def client(self, key: str | None = KEY_A) -> httpx.Client:
        """HTTP client against this server, authenticated with `key` (None: anonymous)."""
        return httpx.Client(base_url=self.url, headers=auth(key) if key else {}, timeout=10)


def serve(redis_url: str, env: Mapping[str, str] | None = None) -> Iterator[ApiServer]:
    """Start a server for a fixture and stop it afterwards."""
    server = ApiServer(redis_url, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", name="api")
def api_fixture(redis_server: RedisServer) -> Iterator[ApiServer]:
    """One API server per test module, auth on (KEY_A, KEY_B), small bounds."""
    yield from serve(redis_server.url)


@pytest.fixture(name="store")
def store_fixture(redis_url: str) -> Iterator[JobStore]:
    """A JobStore on the clean per-test database, as a worker would hold it."""
    client = redis.Redis.from_url(redis_url)
    yield JobStore(client, result_ttl=60)
    client.close()


def wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    """Poll `url`/readyz until it answers 200; fail with the tail of `log` if `process` (`ldm-serve
    up`, say) exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert process.poll() is None, f"up exited:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"not ready:\n{log.read_text()[-4000:]}"
        time.sleep(0.2)


def encode_png(image: Image.Image) -> bytes:
    """An image as PNG bytes (an upload)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def native_first_image(server: ApiServer, route: str, **kwargs: object) -> bytes:
    """POST a native job (kwargs as httpx's: json=, data=, files=), wait for it to succeed, and
    return its first image's bytes: the reference the dialect tests compare with."""
    with server.client() as http:
        reply = http.post(route, **kwargs)  # type: ignore[arg-type]
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["id"]
        deadline = time.monotonic() + 60
        while (job := http.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.1)
        assert job["status"] == "succeeded", job
        return http.get(job["images"][0]).content


def tiny_png(width: int = 1, height: int = 1) -> bytes:
    """A valid grey PNG, built without PIL."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
