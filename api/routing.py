"""The gateway's route class: JSON bodies are bounded (size, nesting depth) before FastAPI parses them."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from api.middleware import body_limit
from service.config import Settings
from service.jsonlimits import check_bounds


def is_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: ``application/json``, ``application/*+json`` (and no content type)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class BoundedJSONRoute(APIRoute):
    """An :class:`APIRoute` whose JSON body is checked by :func:`service.jsonlimits.check_bounds` first
    (a 413/422 problem instead of a RecursionError inside FastAPI's ``json.loads``)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def bounded(request: Request) -> Response:
            if is_json(request.headers.get("content-type")):
                body = await request.body()  # cached on the request: FastAPI reads it again
                if body:
                    settings: Settings = request.app.state.services.settings
                    limit = body_limit(settings, request.method, request.url.path)
                    check_bounds(body, max_depth=settings.max_json_depth, max_bytes=limit)
            return await handler(request)

        return bounded
