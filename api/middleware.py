"""The API's HTTP middleware, as plain ASGI callables.

They were `@app.middleware("http")` functions (Starlette's BaseHTTPMiddleware): each of those
runs the rest of the app in a task of its own and copies the response body through a memory
stream, on every request. Three of them were a measurable share of the API's CPU per request in
the issue #16 load benchmark. These do the same work by looking at the `send` messages passing
by: no task, no copy (benchmarks/README.md, "API load").
"""
from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import limits
from .settings import Settings


class RefuseOversizedUploads:
    """Answer 401/411/413 to an upload (tenant's limit, from Content-Length) before its multipart
    body is read and spooled to disk (api/limits.py). Only POSTs are looked at."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            refused = await limits.refuse_upload(Request(scope), self.settings)   # reads headers only
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


class RetryAfterOn503:
    """Every 503 (readiness, a route's own "queue unreachable") tells clients when to retry; a
    Retry-After the response already has is kept."""

    def __init__(self, app: ASGIApp, seconds: int) -> None:
        self.app, self.value = app, str(seconds).encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_retry_after(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", ()))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    message = {**message, "headers": [*headers, (b"retry-after", self.value)]}
            await send(message)

        await self.app(scope, receive, send_with_retry_after)
