"""The FastAPI app: ``create_app(settings)``; ``app`` is built from the environment (``VEIL_*``).

Run: ``uvicorn api.main:app`` (or ``uvicorn --factory api.main:create_app``). OpenAPI docs at /docs.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema

from api.methods import load_catalog
from api.metrics import Metrics
from api.middleware import BodyLimitMiddleware, MetricsMiddleware
from api.problems import BAD_REQUEST, PROBLEM_TYPES, Problem, install_problem_handlers, problem_response
from api.ratelimit import RateLimiter
from api.routes import app as app_page
from api.routes import health, jobs, methods, uploads
from api.submit import Services
from api.uploads import UploadStore
from service.config import Settings
from service.contract import CONTRACT_MODELS
from service.jobs import JobStore
from service.queue import make_celery
from service.redisdb import make_redis
from service.storage import Storage, StorageError

log = logging.getLogger(__name__)

DESCRIPTION = """Veil adds imperceptible adversarial perturbations to face photos so that deepfake
attribute editors fail.

Authenticate with `Authorization: Bearer <API key>`. Errors are RFC 9457 problem details
(`application/problem+json`); their `type` is one of:

""" + "\n".join(f"* `/problems/{slug}`: {text}" for slug, text in PROBLEM_TYPES.items())


def build_services(settings: Settings) -> Services:
    """Clients and stores of one app (no network I/O happens here)."""
    r = make_redis(settings)
    broker = r if settings.broker_url == settings.redis_url else make_redis(settings, settings.broker_url)
    store = JobStore(r, settings)
    return Services(
        settings=settings,
        redis=r,
        broker_redis=broker,
        storage=Storage(settings),
        jobs=store,
        uploads=UploadStore(r, settings),
        limiter=RateLimiter(r, settings),
        celery=make_celery(settings),
        catalog=load_catalog(settings.methods_file),
        metrics=Metrics(settings, lambda: (store, broker)),
    )


def publish_contract(app: FastAPI) -> None:
    """Add the gateway/worker contract (:mod:`service.contract`: the resolved options, the task payload)
    to the OpenAPI document's ``components.schemas``, next to the request and response bodies."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema(
                [(model, "serialization") for model in CONTRACT_MODELS], ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for name, definition in defs.get("$defs", {}).items():
                components.setdefault(name, definition)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    services: Services = app.state.services
    try:
        await run_in_threadpool(services.storage.ensure_bucket)
    except StorageError as exc:  # /readyz reports it; the app still starts
        log.error("object storage not ready: %s", exc)
    yield
    services.celery.close()
    services.redis.close()
    if services.broker_redis is not services.redis:
        services.broker_redis.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="Veil API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        responses={400: BAD_REQUEST},
    )
    services = build_services(settings)
    app.state.services = services
    install_problem_handlers(app)
    publish_contract(app)

    async def on_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("dependency unavailable on %s: %s", request.url.path, exc)
        what = "Redis" if isinstance(exc, redis.RedisError) else "object storage"
        return problem_response(
            Problem(
                503,
                "unavailable",
                f"{what} is unavailable; retry later",
                title="Service unavailable",
                headers={"Retry-After": "5"},
            ),
            request,
        )

    app.add_exception_handler(redis.RedisError, on_unavailable)
    app.add_exception_handler(StorageError, on_unavailable)
    for router in (jobs.router, uploads.router, methods.router, health.router, app_page.router):
        app.include_router(router)
    # Added last = outermost: metrics see every request, including 413s answered by the body limit.
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    return app


app = create_app()
