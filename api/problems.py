"""RFC 9457 problem details (``application/problem+json``) for every error the gateway answers."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import (
    EmptyInput,
    InvalidArchive,
    InvalidJSON,
    ServiceError,
    TooLarge,
    TooManyEntries,
    TooManyPixels,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "/problems/"


class Problem(Exception):
    """An error answered as problem+json. ``slug`` names the problem type (``/problems/<slug>``)."""

    def __init__(
        self,
        status: int,
        slug: str | None = None,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        self.status = status
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions
        super().__init__(detail or self.title)

    def body(self, instance: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"{TYPE_BASE}{self.slug}" if self.slug else "about:blank",
            "title": self.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body


def problem_response(
    problem: Problem, request: Request | None = None, instance: str | None = None
) -> JSONResponse:
    instance = instance or (request.url.path if request is not None else None)
    return JSONResponse(
        problem.body(instance), status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON
    )


# Problem types the gateway answers (documented in the OpenAPI description).
PROBLEM_TYPES: dict[str, str] = {
    "bad-request": "an invalid Content-Length, or a body that cannot be read (400)",
    "validation-error": "the request is malformed or a field is out of range (422)",
    "unauthorized": "missing or unknown API key (401)",
    "not-found": "no such resource for this tenant (404)",
    "too-large": "body or object over the byte limit (413)",
    "too-many-pixels": "an image over the pixel limit (413)",
    "too-many-entries": "an archive over the entry limit (413)",
    "unsupported-media-type": "not a PNG/JPEG/WebP image or a zip archive (415)",
    "invalid-archive": "a zip archive that cannot be processed (422)",
    "idempotency-key-reused": "the Idempotency-Key was used with a different body (422)",
    "idempotency-in-progress": "a request with this Idempotency-Key is still being processed (409)",
    "conflict": "the resource is in a state that does not allow this (409)",
    "rate-limited": "too many requests for this key; see Retry-After (429)",
    "unavailable": "a dependency (Redis, S3, the queue) is unavailable (503)",
    "not-ready": "a readiness check failed (503)",
    "internal-error": "an unexpected error (500)",
}

# Any operation can answer a 400 (BodyLimitMiddleware: an invalid Content-Length; a body that cannot be read).
BAD_REQUEST = {"content": {PROBLEM_JSON: {}}, "description": "problem details (RFC 9457): bad request"}


# The service layer's exceptions as HTTP: status and title (the slug is the exception's ``code``).
SERVICE_ERRORS: dict[type[ServiceError], tuple[int, str]] = {
    EmptyInput: (422, "Validation error"),
    TooLarge: (413, "Content too large"),
    TooManyPixels: (413, "Too many pixels"),
    TooManyEntries: (413, "Too many archive entries"),
    UnsupportedMediaType: (415, "Unsupported media type"),
    InvalidArchive: (422, "Invalid archive"),
    InvalidJSON: (422, "Validation error"),
}


def problem_for(exc: ServiceError) -> Problem:
    """The problem a service-layer exception is answered with (its most specific mapped class wins)."""
    for cls in type(exc).__mro__:
        if cls in SERVICE_ERRORS:
            status, title = SERVICE_ERRORS[cls]
            return Problem(status, exc.code, exc.detail, title=title, **exc.extensions)
    return Problem(422, exc.code, exc.detail, **exc.extensions)


def _validation_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)] or ["body"]
        out.append({"loc": loc, "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    return out


def validation_problem(errors: Any, detail: str | None = None) -> Problem:
    errs = _validation_errors(errors)
    if detail is None:
        first = errs[0] if errs else {"loc": ["body"], "msg": "invalid"}
        detail = f"{'.'.join(first['loc'])}: {first['msg']}"
    return Problem(422, "validation-error", detail, title="Validation error", errors=errs)


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the request's path answers: the ``Allow`` of a 405 (Starlette's names
    only the first route of the path, e.g. ``POST`` for ``/v1/jobs``, whose ``GET`` is another route)."""
    allowed = []
    for method in HTTP_METHODS:
        scope = {
            "type": "http",
            "method": method,
            "path": request.scope["path"],
            "root_path": request.scope.get("root_path", ""),
            "headers": [],
            "query_string": b"",
        }
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_problem_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc, request)

    async def on_service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return problem_response(problem_for(exc), request)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        slug = {404: "not-found", 401: "unauthorized", 413: "too-large", 429: "rate-limited"}.get(
            exc.status_code
        )
        detail = (
            exc.detail
            if isinstance(exc.detail, str) and exc.detail != HTTPStatus(exc.status_code).phrase
            else None
        )
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        problem = Problem(exc.status_code, slug, detail, headers=headers)
        if exc.status_code == 400 and detail:
            problem = Problem(400, "bad-request", detail)
        return problem_response(problem, request)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return problem_response(validation_problem(exc.errors()), request)

    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(Problem(500, "internal-error", "an unexpected error occurred"), request)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(ServiceError, on_service_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_error)
