"""Protection methods, by registry name: ``create_method(name, forgers, **options)``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import core.generators  # noqa: F401  (registers the one-pass methods: retentive, dwt-chroma, initiative)
from core.forgers import Forger
from core.methods import anti_forgery as _anti_forgery  # noqa: F401  (registers)
from core.methods import dwt_pgd as _dwt_pgd  # noqa: F401  (registers)
from core.methods import pgd as _pgd  # noqa: F401  (registers)
from core.methods.base import METHODS, OBJECTIVES, Protection, expand_targets, parse_options

__all__ = ["METHODS", "OBJECTIVES", "Protection", "create_method", "expand_targets", "method_names",
           "parse_options"]


def method_names() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[Protection]:
    return METHODS.get(name)  # type: ignore[return-value]


def create_method(name: str, forgers: Forger | Sequence[Forger], **options: Any) -> Protection:
    """Build a protection method by name (``pgd``, ``anti-forgery``, ``dwt-pgd``, ...)."""
    factory = METHODS.get(name)
    try:
        return factory(forgers, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ValueError(f"{name} does not take that option: {exc}") from None
