"""Slow clients (slow loris): a request whose headers and body have not all arrived within
LDM_REQUEST_READ_TIMEOUT is answered 408 and its connection closed, while others are served.

The API runs as production runs it: `ldm-serve api` (cli/serve.py), not bare uvicorn.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.api_harness import DEFAULT_ENV, KEY_A, auth
from tests.conftest import REPO, RedisServer, free_port, wait_for_port

pytestmark = pytest.mark.slow  # waits out read deadlines (~10 s)

READ_TIMEOUT_S = 3.0
GRACE_S = 3.0
LORISES = 50
TRICKLE_S = 0.25  # one byte per socket this often: never idle, never done


@dataclass
class Loris:
    """A raw connection that sends `head` at once, then one byte of `tail` per tick."""

    head: bytes
    tail: bytes
    sock: socket.socket = field(init=False)
    opened: float = field(init=False)
    closed: float | None = None
    reply: bytes = b""

    def open(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.opened = time.monotonic()
        if self.head:
            self.sock.sendall(self.head)

    def tick(self) -> None:
        """Read what the server said (EOF or reset: closed), then trickle one more byte."""
        try:
            while select.select([self.sock], [], [], 0)[0]:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionResetError
                self.reply += data
            if self.tail:
                self.sock.send(self.tail[:1])
                self.tail = self.tail[1:]
        except OSError:  # reset, broken pipe: the server closed it
            self.closed = time.monotonic()
            self.sock.close()


@pytest.fixture()
def api(redis_url: str) -> Iterator[str]:
    """`ldm-serve api` with a short read timeout."""
    port = free_port()
    env = {**os.environ, **DEFAULT_ENV, "REDIS_URL": redis_url, "PYTHONPATH": str(REPO)}
    env["LDM_REQUEST_READ_TIMEOUT"] = str(READ_TIMEOUT_S)
    argv = [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen([*argv, "--log-level", "warning"], cwd=REPO, env=env)
    try:
        wait_for_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def lorises(port: int) -> list[Loris]:
    """Silent ones, slow headers, and complete headers with a slow body."""
    body = b'{"prompt": "' + b"x" * 150 + b'"}'
    headers = f"POST /v1/txt2img HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
    full = headers + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    slow: list[Loris] = []
    for index in range(LORISES):
        kind = index % 5
        if kind == 0:
            slow.append(Loris(b"", b""))  # connects, says nothing
        elif kind in (1, 2):
            slow.append(Loris(b"GET /healthz HTTP/1.1\r\n", b"X-Padding: " + b"y" * 200))
        else:
            slow.append(Loris(full.encode(), body))
    for loris in slow:
        loris.open(port)
    return slow


def test_slow_clients_are_cut_off_and_others_served(api: str, redis_server: RedisServer) -> None:
    port = int(api.rsplit(":", 1)[1])
    slow = lorises(port)
    served: list[int] = []
    give_up = time.monotonic() + READ_TIMEOUT_S + GRACE_S + 2
    try:
        with httpx.Client(base_url=api, headers=auth(KEY_A), timeout=5) as client:
            while time.monotonic() < give_up and any(loris.closed is None for loris in slow):
                for loris in slow:
                    if loris.closed is None:
                        loris.tick()
                if len(served) < 10:
                    served.append(client.post("/v1/txt2img", json={"prompt": "x"}).status_code)
                    served.append(client.get("/healthz").status_code)
                time.sleep(TRICKLE_S)
            after = client.get("/healthz").status_code
            metrics = client.get("/metrics").text
    finally:
        still_open = [loris for loris in slow if loris.closed is None]
        for loris in still_open:
            loris.sock.close()
    assert not still_open, f"{len(still_open)} of {LORISES} slow connections still open"
    held = [loris.closed - loris.opened for loris in slow if loris.closed is not None]
    assert min(held) >= READ_TIMEOUT_S - 0.5 and max(held) <= READ_TIMEOUT_S + GRACE_S, held
    timed_out = [loris for loris in slow if loris.reply.startswith(b"HTTP/1.1 408 ")]
    assert len(timed_out) == LORISES, [loris.reply[:40] for loris in slow if loris not in timed_out]
    assert all(b"urn:ldm-serve:problem:request-timeout" in loris.reply for loris in timed_out)
    assert served == [202, 200] * 5 and after == 200
    # Slow bodies reached the app: counted as 408, not as server errors.
    assert 'method="POST",route="unmatched",status="408"} 20.0' in metrics  # pre-routing
    assert 'status="500"' not in metrics
    del redis_server


def send_slowly(port: int, pieces: list[bytes], pause_s: float) -> bytes:
    """Send `pieces` `pause_s` apart on a fresh connection; the start of the answer."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for piece in pieces:
            sock.sendall(piece)
            time.sleep(pause_s)
        sock.settimeout(5)
        return sock.recv(4096)


def test_requests_within_the_deadline_are_served(api: str) -> None:
    """Headers in pieces over 1.5 s, and a body over 2.5 s (longer than LDM_REDIS_DEADLINE, 2 s,
    which starts once the body is in), both within the 3 s read timeout: answered as usual."""
    port = int(api.rsplit(":", 1)[1])
    headers = [b"GET /healthz HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"]
    assert send_slowly(port, headers, 0.5).startswith(b"HTTP/1.1 200 ")
    body = b'{"prompt": "a slow upload"}'
    head = (
        f"POST /v1/txt2img HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY_A}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    pieces = [head.encode(), *(body[i : i + 6] for i in range(0, len(body), 6))]
    assert send_slowly(port, pieces, 2.5 / (len(pieces) - 1)).startswith(b"HTTP/1.1 202 ")
