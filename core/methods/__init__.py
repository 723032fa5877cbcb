"""Protection methods, by registry name: ``create_method(name, forgers, **options)``.

Iterative methods (``pgd``, ``pgd-l2``, ``anti-forgery``, ``dwt-pgd``) optimise each photo; one-pass methods
(``retentive``, ``dwt-chroma``, ``initiative``; base :class:`~core.methods.one_pass.GeneratorMethod`) run
a trained generator network once (:mod:`core.generators` holds the networks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.forgers import Forger
from core.methods import anti_forgery as _anti_forgery  # noqa: F401  (registers)
from core.methods import dwt_chroma as _dwt_chroma  # noqa: F401  (registers)
from core.methods import dwt_pgd as _dwt_pgd  # noqa: F401  (registers)
from core.methods import initiative as _initiative  # noqa: F401  (registers)
from core.methods import pgd as _pgd  # noqa: F401  (registers)
from core.methods import pgd_l2 as _pgd_l2  # noqa: F401  (registers)
from core.methods import retentive as _retentive  # noqa: F401  (registers)
from core.methods.base import METHODS, OBJECTIVES, Protection, Through, expand_targets, parse_options
from core.methods.one_pass import GeneratorMethod

__all__ = ["METHODS", "OBJECTIVES", "GeneratorMethod", "Protection", "Through", "create_method", "expand_targets",
           "method_names", "parse_options"]


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
