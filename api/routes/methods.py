"""``GET /v1/methods``: the protection methods, forgers and output formats (public)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ServicesDep
from api.methods import Catalog

router = APIRouter(prefix="/v1/methods", tags=["methods"])


@router.get("", response_model=Catalog, summary="Protection methods and forgers")
def list_methods(services: ServicesDep) -> Catalog:
    """Served from ``VEIL_METHODS_FILE`` (default ``api/methods.json``), kept in sync by the worker side.

    ``eps`` values are fractions of the perturbed channels' range (0 < eps <= ``eps_max``); a worker
    hands ``eps * core_eps_scale`` to the core method."""
    return services.catalog
