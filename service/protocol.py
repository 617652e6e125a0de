"""uvicorn's h11 protocol with a request read deadline: the slow-loris defence.

uvicorn times out only idle kept-alive connections (`timeout_keep_alive`); a client that opens a
connection and trickles its headers or body byte by byte holds it (and, in the body, an app task)
forever. Here each request's headers and body must all have arrived LDM_REQUEST_READ_TIMEOUT
seconds after its first byte (the first request: after the connection opened); otherwise it is
answered 408 (problem+json) unless its response has started, and the connection is closed. The
app then sees `http.disconnect` and frees what it held.

`ldm-serve api` (cli/serve.py) serves with it, as does
`uvicorn --http service.protocol:ReadDeadlineH11Protocol`. uvicorn internals relied on (pinned by
tests/test_api_slow_clients.py): `H11Protocol` with its `connection_made`, `data_received` and
`connection_lost`, and its `conn` (the h11.Connection), `transport`, `loop`, `scope` and `cycle`
(`response_started`, `response_complete`) attributes.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.errors import PROBLEM_MEDIA_TYPE, Problem
from service.settings import ApiSettings

# Client states in which the current request is still arriving (headers, then body).
_READING = (h11.IDLE, h11.SEND_BODY)


@functools.cache
def read_timeout_s() -> float:
    """LDM_REQUEST_READ_TIMEOUT of this process."""
    return ApiSettings().request_read_timeout_s


@functools.cache
def timeout_response(seconds: float) -> bytes:
    """The raw 408 answer (written outside the app: no request may have reached it)."""
    detail = f"the request's headers and body did not arrive within {seconds:g} s"
    problem = Problem(408, "request-timeout", "Request timeout", detail)
    body = json.dumps(problem.body()).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class ReadDeadlineH11Protocol(H11Protocol):
    """H11Protocol whose requests must arrive whole within `read_timeout_s()` of their start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the first request's clock."""
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        """Start the clock at a new request's first byte; stop it once the request is whole."""
        if self.read_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)
        if self.conn.their_state not in _READING:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock."""
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self.read_timer = self.loop.call_later(read_timeout_s(), self._timed_out)

    def _disarm(self) -> None:
        if self.read_timer is not None:
            self.read_timer.cancel()
            self.read_timer = None

    def _timed_out(self) -> None:
        """408 unless this request's response already started (the app answered early); close."""
        self.read_timer = None
        if self.conn.their_state not in _READING or self.transport.is_closing():
            return
        cycle = self.cycle
        in_app = cycle is not None and not cycle.response_complete
        if in_app:  # the app waits for the rest of the body; it gets http.disconnect
            self.scope["state"]["reject_reason"] = "request-timeout"
        if not (in_app and cycle.response_started):
            self.transport.write(timeout_response(read_timeout_s()))
        self.logger.info("closed a connection whose request did not arrive in time")
        self.transport.close()
