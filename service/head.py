"""ASGI middleware: HEAD is answered as GET without the body (RFC 9110 section 9.3.2).

FastAPI routes a `@router.get` for GET only, so `curl -I`, link checkers and uptime probes that
send HEAD got 405 everywhere. Here a HEAD request is routed as GET, the response's status and
headers (Content-Length, Content-Type, Cache-Control) pass through, and its body never leaves:
the response is ended as soon as it starts, so a stream (server-sent events) stops at once.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTING_KEYS = ("route", "endpoint", "path_params")  # what the router writes into the scope


class HeadAsGet:
    """Route HEAD as GET; send the GET response's start and an empty, final body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve HEAD through the GET route (the server's own scope still says HEAD)."""
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        ended = False

        async def send_head(message: Message) -> None:
            nonlocal ended
            if ended or message["type"] != "http.response.start":
                return  # the body, and anything after the end
            await send(message)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            ended = True

        as_get = {**scope, "method": "GET"}  # a copy: the server sends no body for its HEAD
        try:
            await self.app(as_get, receive, send_head)
        finally:
            scope.update({key: as_get[key] for key in ROUTING_KEYS if key in as_get})
