"""Differentiable spatial filters: Gaussian blur and down-then-up rescaling (the "resize" condition)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _check_images(x: Tensor, name: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{name}: expected an (N, C, H, W) tensor, got shape {tuple(x.shape)}")


def default_kernel_size(sigma: float) -> int:
    """``2 * ceil(3 sigma) + 1``: odd, and covers +-3 sigma (99.7 % of the mass)."""
    return 2 * math.ceil(3 * sigma) + 1


def gaussian_kernel1d(
    sigma: float, kernel_size: int, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> Tensor:
    """Normalised 1-D Gaussian of length ``kernel_size`` (odd), centred, summing to 1."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    # Built in float64 and normalised there, so the sum is 1 to the precision of `dtype`.
    t = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(x: Tensor, sigma: float, kernel_size: int | None = None) -> Tensor:
    """Separable Gaussian blur with reflect padding, differentiable w.r.t. ``x``.

    Args:
        x: ``(N, C, H, W)`` float tensor, any range (the blur is linear and preserves constants).
        sigma: standard deviation in pixels; ``sigma == 0`` returns ``x`` unchanged.
        kernel_size: odd kernel length; default ``2 * ceil(3 * sigma) + 1``.

    Returns:
        ``(N, C, H, W)``, same dtype and device. Images smaller than the kernel radius are padded by
        replication instead of reflection (reflection needs the pad to be smaller than the size).
    """
    _check_images(x, "gaussian_blur")
    if sigma < 0:
        raise ValueError(f"gaussian_blur: sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return x
    size = default_kernel_size(sigma) if kernel_size is None else kernel_size
    k = gaussian_kernel1d(sigma, size, x.dtype, x.device)
    c = x.shape[1]
    pad = size // 2
    h, w = x.shape[-2:]
    mode = "reflect" if pad < h and pad < w else "replicate"
    x = F.pad(x, (pad, pad, pad, pad), mode=mode)
    # Depthwise (groups=C) horizontal then vertical pass: 2k instead of k^2 multiplies per pixel.
    x = F.conv2d(x, k.view(1, 1, 1, size).expand(c, 1, 1, size), groups=c)
    return F.conv2d(x, k.view(1, 1, size, 1).expand(c, 1, size, 1), groups=c)


def box_blur(x: Tensor, size: int) -> Tensor:
    """Average (box) blur over ``size`` x ``size`` pixels, reflect padding, differentiable w.r.t. ``x``.

    Args:
        x: ``(N, C, H, W)`` float tensor.
        size: kernel side >= 1 (1 returns ``x``); an even side puts the extra pixel after the centre.

    Returns:
        ``(N, C, H, W)``, same dtype and device; constants are preserved.
    """
    _check_images(x, "box_blur")
    if size < 1:
        raise ValueError(f"box_blur: size must be >= 1, got {size}")
    if size == 1:
        return x
    before, after = (size - 1) // 2, size // 2
    h, w = x.shape[-2:]
    mode = "reflect" if after < h and after < w else "replicate"
    return F.avg_pool2d(F.pad(x, (before, after, before, after), mode=mode), size, stride=1)


def rescale(x: Tensor, scale: float) -> Tensor:
    """Resize by ``scale`` then back to the original size (bilinear, antialiased), differentiable.

    This is what happens to a photo that a platform stores at lower resolution and a forger then
    upsamples: high frequencies above the reduced Nyquist limit are lost.

    Args:
        x: ``(N, C, H, W)`` float tensor.
        scale: > 0; the intermediate size is ``max(1, round(H * scale)) x max(1, round(W * scale))``.
            A scale that leaves the size unchanged (e.g. 1.0) returns ``x`` itself.

    Returns:
        ``(N, C, H, W)``, same dtype and device.
    """
    _check_images(x, "rescale")
    if scale <= 0:
        raise ValueError(f"rescale: scale must be > 0, got {scale}")
    h, w = x.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return x
    # antialias=True low-passes before decimating (like PIL's resize), so the result does not depend
    # on aliasing of the pixel grid; it is a no-op on the upsampling leg.
    small = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def reframe(x: Tensor, shift: tuple[float, float] = (0.0, 0.0), scale: float = 1.0, angle: float = 0.0) -> Tensor:
    """Crop the same images again with a slightly different framing (bilinear resampling), differentiable.

    What a face detector does to a protected face: the attacker's crop is shifted, scaled and rotated a
    little from the one the protection was made for, and resampled. A perturbation with pixel-period
    texture does not survive it; training through it (EoT) teaches one that does.

    Args:
        x: ``(N, C, H, W)`` float tensor.
        shift: (dx, dy) of the new crop's centre, as fractions of the width and height.
        scale: > 0, the new crop's side over the old one (> 1 takes in more of the surroundings).
        angle: the new crop's rotation, radians.

    Returns:
        ``(N, C, H, W)``, same dtype and device; borders beyond the image repeat its edge pixels.
        The identity framing returns ``x`` itself.
    """
    _check_images(x, "reframe")
    if scale <= 0:
        raise ValueError(f"reframe: scale must be > 0, got {scale}")
    if shift == (0.0, 0.0) and scale == 1.0 and angle == 0.0:
        return x
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    theta = torch.tensor([[c, -s, 2 * shift[0]], [s, c, 2 * shift[1]]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(x.shape[0], 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def seeded(seed: float) -> torch.Generator:
    """A generator seeded by an EoT parameter in [0, 1): a transform whose draw is one number draws the rest
    from it."""
    return torch.Generator().manual_seed(int(seed * 2**31))


def random_reframe(x: Tensor, seed: float, jitter: float = 0.03) -> Tensor:
    """:func:`reframe` with a framing drawn from ``seed`` (the EoT parameter, in [0, 1)): shift up to
    ``jitter`` of the side on each axis, scale within 1 +- ``1.5 * jitter``, rotation up to ``jitter``
    radians (1.7 degrees at 0.03) - about the spread of face detectors' framings."""
    gen = seeded(seed)
    u = torch.rand(4, generator=gen).tolist()
    return reframe(x, ((2 * u[0] - 1) * jitter, (2 * u[1] - 1) * jitter), 1 + (2 * u[2] - 1) * 1.5 * jitter,
                   (2 * u[3] - 1) * jitter)


class GaussianBlur(nn.Module):
    """Module form of :func:`gaussian_blur`."""

    def __init__(self, sigma: float, kernel_size: int | None = None) -> None:
        super().__init__()
        self.sigma = sigma
        self.kernel_size = kernel_size

    def forward(self, x: Tensor) -> Tensor:
        return gaussian_blur(x, self.sigma, self.kernel_size)


class Rescale(nn.Module):
    """Module form of :func:`rescale`."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return rescale(x, self.scale)
