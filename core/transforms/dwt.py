"""2-D Haar discrete wavelet transform: thin, cached wrappers over ``pytorch_wavelets``.

The protection methods perturb wavelet sub-bands (e.g. only the low-frequency band, which survives
JPEG), so they need a DWT that is differentiable and exactly invertible. With the Haar wavelet and
``mode="zero"`` there is no boundary extension at all when each level's size is even, so
``idwt(*dwt(x)) == x`` up to float rounding.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # imported lazily below: pytorch_wavelets pulls in pkg_resources, which is slow and noisy
    from pytorch_wavelets import DWTForward, DWTInverse

WAVE = "haar"
MODE = "zero"


def _import_pytorch_wavelets() -> tuple[type[DWTForward], type[DWTInverse]]:
    # pytorch_wavelets (1.3) does `from pkg_resources import resource_stream`, and setuptools warns that
    # pkg_resources is deprecated. Silence that here only, so user code still sees its own warnings.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from pytorch_wavelets import DWTForward, DWTInverse
    return DWTForward, DWTInverse


# The modules only hold four 2-tap filters as buffers; caching one per (levels, device, dtype) avoids
# rebuilding them (and copying filters to the GPU) in every step of an attack loop.
@functools.lru_cache(maxsize=32)
def _forward_module(levels: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    dwt_forward, _ = _import_pytorch_wavelets()
    return dwt_forward(J=levels, wave=WAVE, mode=MODE).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def _inverse_module(device: torch.device, dtype: torch.dtype) -> nn.Module:
    _, dwt_inverse = _import_pytorch_wavelets()
    return dwt_inverse(wave=WAVE, mode=MODE).to(device=device, dtype=dtype)


def _check_size(x: Tensor, levels: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"dwt: expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if levels < 1:
        raise ValueError(f"dwt: levels must be >= 1, got {levels}")
    h, w = x.shape[-2:]
    m = 2**levels
    if h % m or w % m:
        # pytorch_wavelets silently zero-pads odd sizes and the inverse then returns a larger image;
        # we refuse instead so the caller decides how to pad (e.g. replicate) and what to crop back.
        raise ValueError(
            f"dwt: height and width must be multiples of 2**levels = {m} for an exact inverse, "
            f"got {h}x{w}; pad the image first (e.g. F.pad(x, ..., mode='replicate')) and crop after idwt"
        )


def dwt(x: Tensor, levels: int = 1) -> tuple[Tensor, list[Tensor]]:
    """Multi-level 2-D Haar DWT (``mode="zero"``), differentiable.

    Args:
        x: ``(N, C, H, W)`` float tensor, any range; H and W must be multiples of ``2**levels``.
        levels: number of decomposition levels (>= 1).

    Returns:
        ``(low, highs)``: ``low`` is ``(N, C, H / 2**levels, W / 2**levels)``; ``highs`` is a list of
        ``levels`` tensors, finest first, ``highs[j]`` of shape ``(N, C, 3, H / 2**(j+1), W / 2**(j+1))``
        holding the (LH, HL, HH) detail bands. The Haar transform is orthonormal, so ``low`` of a
        constant image c is ``c * 2**levels``.

    Raises:
        ValueError: on a non-4-D input or a size that is not a multiple of ``2**levels``.
    """
    _check_size(x, levels)
    low, highs = _forward_module(levels, x.device, x.dtype)(x)
    return low, list(highs)


def idwt(low: Tensor, highs: list[Tensor]) -> Tensor:
    """Inverse of :func:`dwt`: ``(N, C, h, w)`` low band and finest-first detail bands -> ``(N, C, H, W)``."""
    if not highs:
        raise ValueError("idwt: need at least one level of detail bands")
    return _inverse_module(low.device, low.dtype)((low, list(highs)))


class DWT(nn.Module):
    """Module form of :func:`dwt`."""

    def __init__(self, levels: int = 1) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        return dwt(x, self.levels)


class IDWT(nn.Module):
    """Module form of :func:`idwt`."""

    def forward(self, low: Tensor, highs: list[Tensor]) -> Tensor:
        return idwt(low, highs)
