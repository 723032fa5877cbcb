"""``/healthz`` (process up), ``/readyz`` (Redis, S3, a live worker), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep
from api.problems import Problem, problem_response
from service.heartbeat import live_workers
from service.storage import StorageError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis ping, S3 bucket, at least one worker heartbeat",
    responses={503: {"content": {"application/problem+json": {}}, "description": "a check failed"}},
)
def readyz(services: ServicesDep) -> Any:
    checks: dict[str, str] = {}
    try:
        services.redis.ping()
        checks["redis"] = "ok"
    except redis.RedisError as exc:
        checks["redis"] = f"error: {exc}"
    try:
        services.storage.check()
        checks["s3"] = "ok"
    except StorageError as exc:
        checks["s3"] = f"error: {exc}"[:300]
    if checks["redis"] == "ok":
        try:
            workers = live_workers(services.redis, services.settings)
            checks["workers"] = f"ok: {len(workers)}" if workers else "error: no worker heartbeat"
        except redis.RedisError as exc:
            checks["workers"] = f"error: {exc}"
    else:
        checks["workers"] = "error: Redis unavailable"
    failed = [name for name, value in checks.items() if not value.startswith("ok")]
    if failed:
        problem = Problem(
            503,
            "not-ready",
            f"failed checks: {', '.join(failed)}",
            title="Not ready",
            failed=failed,
            checks=checks,
        )
        return problem_response(problem, instance="/readyz")
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)
