"""FastAPI dependencies (``Annotated`` aliases used by the routers)."""

from __future__ import annotations

from typing import Annotated

import redis
from fastapi import Depends, Request

from api.problems import Problem
from api.submit import Services
from service.config import Settings
from service.keys import Principal, lookup_key


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_settings(services: ServicesDep) -> Settings:
    return services.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def _unauthorized(detail: str, error: str = "invalid_request") -> Problem:
    return Problem(
        401,
        "unauthorized",
        detail,
        title="Unauthorized",
        headers={"WWW-Authenticate": f'Bearer realm="veil", error="{error}"'},
    )


def authenticate(request: Request, services: ServicesDep) -> Principal:
    """``Authorization: Bearer <key>`` -> the caller's tenant; then the per-key rate limit (429)."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("send Authorization: Bearer <API key>")
    try:
        principal = lookup_key(key.strip(), r=services.redis, settings=services.settings)
        if principal is None:
            raise _unauthorized("unknown or revoked API key", "invalid_token")
        result = services.limiter.hit(principal.key_id)
    except redis.RedisError as exc:
        raise Problem(
            503, "unavailable", "the key store is unavailable", title="Service unavailable"
        ) from exc
    if not result.allowed:
        raise Problem(
            429,
            "rate-limited",
            f"more than {result.limit} requests in {services.settings.rate_limit_window_s:g} s",
            title="Too many requests",
            headers={"Retry-After": str(result.retry_after_s)},
            retry_after=result.retry_after_s,
        )
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
