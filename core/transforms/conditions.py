"""Evaluation conditions: what can happen to a protected photo between upload and the forger.

Each condition is a *real* operation on an already 8-bit-quantised [-1, 1] batch, and its output is
again on the 8-bit grid, because every real pipeline stores 8-bit pixels between steps: JPEG through
Pillow, and the blur / resize results re-quantised. They are for evaluation only -- no gradients.
Protection methods optimise through the differentiable counterparts in :mod:`core.transforms.eot`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from core.image import quantize
from core.transforms.filters import box_blur, gaussian_blur, rescale
from core.transforms.jpeg import jpeg

Condition = Callable[[Tensor], Tensor]

# A plain dict (not core.registry.Registry, whose unknown-name error is a KeyError): the set is small
# and fixed, and an unknown condition name is a bad argument, i.e. a ValueError.
CONDITIONS: dict[str, Condition] = {
    "clean": lambda x: x,
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg90": lambda x: jpeg(x, 90),
    "resize0.5": lambda x: quantize(rescale(x, 0.5)),
    "blur1": lambda x: quantize(gaussian_blur(x, 1.0)),
    "avgblur3": lambda x: quantize(box_blur(x, 3)),
}


def condition_names() -> list[str]:
    """The registered condition names, ``"clean"`` first then in registration order."""
    return list(CONDITIONS)


def apply_condition(name: str, x: Tensor) -> Tensor:
    """Apply the evaluation condition ``name`` to ``x``.

    Args:
        name: one of :func:`condition_names` (``"clean"``, ``"jpeg75"``, ``"jpeg90"``, ``"resize0.5"``,
            ``"blur1"``, ``"avgblur3"``).
        x: ``(N, 3, H, W)`` in [-1, 1], expected to be on the 8-bit grid already (see
            :func:`core.image.quantize`); ``"clean"`` returns it unchanged (detached).

    Returns:
        ``(N, 3, H, W)`` in [-1, 1] on the 8-bit grid, same dtype and device; no gradient.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    try:
        condition = CONDITIONS[name]
    except KeyError:
        raise ValueError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}") from None
    with torch.no_grad():
        return condition(x.detach())
