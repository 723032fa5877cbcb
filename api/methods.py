"""The catalogue of protection methods and forgers served by ``GET /v1/methods``.

Read from ``Settings.methods_file`` (default ``api/methods.json``), which the worker side keeps in sync
with ``core``'s registries; the gateway never imports ``core``. Note for packaging: a non-editable
install needs ``api/methods.json`` declared as package data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, model_validator

from service.contract import EPS_MAX

DEFAULT_METHODS_FILE = Path(__file__).with_name("methods.json")


class EpsPresets(BaseModel):
    default: float = Field(gt=0)
    low: float = Field(gt=0)
    medium: float = Field(gt=0)
    high: float = Field(gt=0)

    def for_strength(self, strength: str) -> float:
        return float(getattr(self, strength))

    def presets(self) -> list[float]:
        """The named strengths' budgets (low, medium, high)."""
        return [self.low, self.medium, self.high]


class MethodInfo(BaseModel):
    name: str
    title: str
    description: str
    core_units: str
    core_eps_scale: float = Field(gt=0)
    core_eps_range: tuple[float, float] = Field(
        description="(lo, hi]: the core method's accepted budgets; eps * core_eps_scale must lie in it"
    )
    eps: EpsPresets
    defaults: dict[str, Any] = Field(default_factory=dict)


class ForgerInfo(BaseModel):
    name: str
    description: str
    attributes: list[str]


class Catalog(BaseModel):
    version: int = 1
    eps_units: str
    eps_max: float = Field(
        default=EPS_MAX, gt=0, le=EPS_MAX, description="the largest eps a job may ask for (a catalogue may lower it)"
    )
    methods: list[MethodInfo]
    forgers: list[ForgerInfo]
    output_formats: list[str]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        for m in self.methods:
            for name, value in m.eps.model_dump().items():
                if value > self.eps_max:
                    raise ValueError(f"{m.name}: eps {name}={value} over eps_max {self.eps_max}")
            lo, hi = m.core_eps_range
            if self.core_eps(m, self.eps_max) > hi:
                raise ValueError(f"{m.name}: eps_max {self.eps_max} over the core range ({lo}, {hi}]")
        return self

    def core_eps(self, method: MethodInfo, eps: float) -> float:
        """``eps`` in the core method's units, as the gateway hands it to the worker."""
        return round(eps * method.core_eps_scale, 10)

    def method(self, name: str) -> MethodInfo | None:
        return next((m for m in self.methods if m.name == name), None)

    def forger(self, name: str) -> ForgerInfo | None:
        return next((f for f in self.forgers if f.name == name), None)


def load_catalog(path: Path | None = None) -> Catalog:
    """The catalogue in ``path`` (``Settings.methods_file``); None: the shipped ``api/methods.json``."""
    return Catalog.model_validate(json.loads(Path(path or DEFAULT_METHODS_FILE).read_text(encoding="utf-8")))
