"""Evaluation conditions: what can happen to a protected photo between upload and the forger.

Each condition is a *real* operation on an already 8-bit-quantised [-1, 1] batch, and its output is
again on the 8-bit grid, because every real pipeline stores 8-bit pixels between steps: JPEG through
Pillow, and the blur / resize results re-quantised. They are for evaluation only -- no gradients.
Protection methods optimise through the differentiable counterparts in :mod:`core.transforms.eot`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from core.image import quantize
from core.transforms.color import rgb_to_ycbcr, ycbcr_to_rgb
from core.transforms.filters import box_blur, gaussian_blur, rescale
from core.transforms.jpeg import jpeg, webp

Condition = Callable[[Tensor], Tensor]

def chroma_subsample(x: Tensor) -> Tensor:
    """4:2:0 chroma subsampling alone, as JPEG does it before any quantisation: Cb and Cr averaged over
    2x2 blocks and spread back (Y kept), on the 8-bit grid. Isolates what subsampling does to a chroma
    perturbation from what JPEG's quantisation does."""
    ycc = rgb_to_ycbcr((x + 1) / 2)
    h, w = x.shape[-2:]
    chroma = F.interpolate(F.avg_pool2d(ycc[:, 1:], 2, ceil_mode=True), scale_factor=2, mode="nearest")
    out = ycbcr_to_rgb(torch.cat([ycc[:, :1], chroma[..., :h, :w]], dim=1))
    return quantize(out.clamp(0, 1) * 2 - 1)


NOISE_SIGMA = 0.02  # on [-1, 1]: about 2.5 levels of 255, a phone sensor's or a re-upload's mild noise


def mild_noise(x: Tensor) -> Tensor:
    """Gaussian noise of :data:`NOISE_SIGMA`, seeded (the same noise for the clean and the protected photo,
    so that the noise alone never counts as protection), on the 8-bit grid."""
    gen = torch.Generator().manual_seed(0)
    return quantize(x + NOISE_SIGMA * torch.randn(x.shape, generator=gen).to(x))


# A plain dict (not core.registry.Registry, whose unknown-name error is a KeyError): the set is small
# and fixed, and an unknown condition name is a bad argument, i.e. a ValueError.
CONDITIONS: dict[str, Condition] = {
    "clean": lambda x: x,
    "jpeg75": lambda x: jpeg(x, 75),
    "jpeg90": lambda x: jpeg(x, 90),
    "jpeg75-444": lambda x: jpeg(x, 75, subsampling="4:4:4"),  # no chroma subsampling
    "webp80": lambda x: webp(x, 80),
    "chroma420": chroma_subsample,
    "resize0.5": lambda x: quantize(rescale(x, 0.5)),
    "blur1": lambda x: quantize(gaussian_blur(x, 1.0)),
    "avgblur3": lambda x: quantize(box_blur(x, 3)),
    "noise": mild_noise,
}


def condition_names() -> list[str]:
    """The registered condition names, ``"clean"`` first then in registration order."""
    return list(CONDITIONS)


def apply_condition(name: str, x: Tensor) -> Tensor:
    """Apply the evaluation condition ``name`` to ``x``.

    Args:
        name: one of :func:`condition_names` (``"clean"``, ``"jpeg75"``, ``"jpeg90"``, ``"jpeg75-444"``,
            ``"chroma420"``, ``"webp80"``, ``"resize0.5"``, ``"blur1"``, ``"avgblur3"``, ``"noise"``).
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
