"""Pure ASGI middleware: request body limits and request latency metrics."""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import Problem, problem_response
from api.schemas import COMPLETE_MAX_BYTES
from service.config import Settings

if TYPE_CHECKING:
    from api.metrics import Metrics


_COMPLETE = re.compile(r"^/v1/uploads/[^/]+/complete/?$")


def body_limit(settings: Settings, method: str, path: str) -> int:
    """The byte limit of a request body: ``max_request_bytes`` for ``POST /v1/jobs`` (direct uploads),
    the schema's largest body for ``POST /v1/uploads/{id}/complete`` (10,000 parts), else ``max_json_bytes``."""
    if method == "POST" and path.rstrip("/") == "/v1/jobs":
        return settings.max_request_bytes
    if method == "POST" and _COMPLETE.match(path):
        return max(settings.max_json_bytes, COMPLETE_MAX_BYTES)
    return settings.max_json_bytes


class BodyLimitMiddleware:
    """413 before the body is read when Content-Length is over the limit; otherwise count the bytes as
    they stream in and fail the read (an HTTPException, answered as problem+json) once over it.

    The limit is :func:`body_limit`'s.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, scope: Scope) -> int:
        return body_limit(self.settings, scope["method"], scope["path"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = None
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                declared = value
                break
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                response = problem_response(
                    Problem(400, "bad-request", "invalid Content-Length"), instance=scope["path"]
                )
                await response(scope, receive, send)
                return
            if length > limit:
                problem = Problem(
                    413,
                    "too-large",
                    f"request body of {length} bytes, limit {limit}",
                    title="Content too large",
                    limit=limit,
                )
                response = problem_response(problem, instance=scope["path"])
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, f"request body over the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


class MetricsMiddleware:
    """Observe every HTTP request's latency by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - start
            )
