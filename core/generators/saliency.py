"""Saliency masks that need no learned weights, to weight where a perturbation goes.

- :func:`spectral_residual`: Hou & Zhang, "Saliency Detection: A Spectral Residual Approach", CVPR 2007.
  The log amplitude spectrum minus its local (3x3) average is the "novel" part of the image; back in the
  image domain, with the original phase, its energy (blurred) marks the salient regions.
- :func:`center_prior`: an isotropic Gaussian centred on the image, the framing prior of aligned faces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from core.transforms import gaussian_blur

SALIENCY_KINDS = ("spectral", "center", "none")


def _normalise(s: Tensor) -> Tensor:
    lo = s.amin(dim=(-2, -1), keepdim=True)
    hi = s.amax(dim=(-2, -1), keepdim=True)
    return (s - lo) / (hi - lo).clamp_min(1e-12)


def spectral_residual(luma: Tensor, blur_fraction: float = 1 / 8) -> Tensor:
    """``(N, 1, H, W)`` luma (any range) -> ``(N, 1, H, W)`` saliency in [0, 1] (max 1 per image).

    ``blur_fraction`` sets the Gaussian smoothing of the saliency map relative to the image side
    (Hou & Zhang smooth with sigma 8 at 64 px: 1/8).
    """
    if luma.dim() != 4 or luma.shape[1] != 1:
        raise ValueError(f"expected (N, 1, H, W) luma, got {tuple(luma.shape)}")
    y = luma.detach().double()
    spec = torch.fft.fft2(y - y.mean(dim=(-2, -1), keepdim=True))
    log_amp = spec.abs().clamp_min(1e-12).log()
    # The spectrum is periodic: average it with circular padding.
    local = F.avg_pool2d(F.pad(log_amp, (1, 1, 1, 1), mode="circular"), 3, stride=1)
    residual = torch.polar((log_amp - local).exp(), spec.angle())
    sal = torch.fft.ifft2(residual).abs().pow(2)
    sigma = max(0.5, blur_fraction * min(luma.shape[-2:]))
    sal = gaussian_blur(sal, sigma)
    return _normalise(sal).to(luma.dtype)


def center_prior(shape: torch.Size | tuple[int, ...], sigma_fraction: float = 0.35,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(N, 1, H, W)`` Gaussian centred on each image, sigma = ``sigma_fraction`` of the side; max 1."""
    n, _, h, w = shape
    yy = (torch.arange(h, dtype=torch.float64) - (h - 1) / 2) / (sigma_fraction * h)
    xx = (torch.arange(w, dtype=torch.float64) - (w - 1) / 2) / (sigma_fraction * w)
    g = torch.exp(-0.5 * (yy[:, None] ** 2 + xx[None, :] ** 2))
    return g.to(device=device, dtype=dtype).expand(n, 1, h, w).contiguous()


def saliency_mask(luma: Tensor, kind: str = "spectral", floor: float = 0.25) -> Tensor:
    """A mask in [floor, 1] of shape ``(N, 1, H, W)``: ``floor + (1 - floor) * saliency``."""
    if kind not in SALIENCY_KINDS:
        raise ValueError(f"unknown saliency {kind!r}; known: {', '.join(SALIENCY_KINDS)}")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"saliency floor must be in [0, 1], got {floor}")
    if kind == "none":
        return torch.ones_like(luma)
    sal = spectral_residual(luma) if kind == "spectral" else center_prior(luma.shape, device=luma.device,
                                                                          dtype=luma.dtype)
    return floor + (1 - floor) * sal
