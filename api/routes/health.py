"""``/healthz`` (process up), ``/readyz`` (Redis, S3, a live consumer per queue), ``/metrics`` (Prometheus)."""

from __future__ import annotations

from typing import Any

import redis
from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.deps import ServicesDep
from api.problems import Problem, problem_response
from service.heartbeat import consumers
from service.storage import StorageError

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: Redis ping, S3 bucket, a live consumer of each queue",
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
    queues = (services.settings.queue_gpu, services.settings.queue_io)
    if checks["redis"] == "ok":
        try:
            # every queue needs a consumer: a dead io worker stops webhooks and archives while the gpu one lives
            per_queue = consumers(services.redis, services.settings)
            for queue in queues:
                n = len(per_queue.get(queue, []))
                checks[f"queue:{queue}"] = f"ok: {n}" if n else "error: no live worker consumes it"
        except redis.RedisError as exc:
            checks.update({f"queue:{queue}": f"error: {exc}" for queue in queues})
    else:
        checks.update({f"queue:{queue}": "error: Redis unavailable" for queue in queues})
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
