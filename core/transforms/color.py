"""Colour-space conversions: RGB <-> JPEG YCbCr and sRGB <-> CIELab, differentiable.

All functions take ``(*, 3, H, W)`` float tensors (usually NCHW) and work in any float dtype and on any
device. Inputs are *not* clamped, so round trips stay exact for slightly out-of-range values (an
adversarial perturbation before quantisation, an out-of-gamut Lab colour); clamp yourself if needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# --- YCbCr ------------------------------------------------------------------------------------------

# BT.601 luma weights, as used by JFIF/JPEG (full range, no 16..235 footroom).
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB

# The forward and inverse matrices are both derived from (Kr, Kb) instead of being typed in as the
# usual 6-digit constants (0.168736, 1.402, ...), so that they are exact inverses of each other and
# a float64 round trip is exact to ~1e-15 rather than ~1e-6.
_RGB_TO_YCBCR = (
    (_KR, _KG, _KB),
    (-0.5 * _KR / (1 - _KB), -0.5 * _KG / (1 - _KB), 0.5),
    (0.5, -0.5 * _KG / (1 - _KR), -0.5 * _KB / (1 - _KR)),
)
_YCBCR_TO_RGB = (
    (1.0, 0.0, 2 * (1 - _KR)),
    (1.0, -2 * (1 - _KB) * _KB / _KG, -2 * (1 - _KR) * _KR / _KG),
    (1.0, 2 * (1 - _KB), 0.0),
)


def _check_rgb(x: Tensor, name: str) -> None:
    if x.dim() < 3 or x.shape[-3] != 3:
        raise ValueError(f"{name}: expected a (*, 3, H, W) tensor, got shape {tuple(x.shape)}")


def _apply_matrix(m: tuple[tuple[float, ...], ...], x: Tensor) -> Tensor:
    """``out[..., i, h, w] = sum_j m[i][j] * x[..., j, h, w]``."""
    mat = torch.tensor(m, dtype=x.dtype, device=x.device)
    return torch.einsum("ij,...jhw->...ihw", mat, x)


def rgb_to_ycbcr(x: Tensor) -> Tensor:
    """RGB in [0, 1] -> full-range BT.601 (JPEG/JFIF) YCbCr in [0, 1], Cb and Cr centred at 0.5.

    Args:
        x: ``(*, 3, H, W)`` RGB, nominally in [0, 1].

    Returns:
        ``(*, 3, H, W)`` (Y, Cb, Cr); Y in [0, 1], Cb/Cr in [0, 1] for in-gamut inputs.
    """
    _check_rgb(x, "rgb_to_ycbcr")
    y = _apply_matrix(_RGB_TO_YCBCR, x)
    offset = torch.tensor([0.0, 0.5, 0.5], dtype=x.dtype, device=x.device).view(3, 1, 1)
    return y + offset


def ycbcr_to_rgb(y: Tensor) -> Tensor:
    """Full-range BT.601 (JPEG/JFIF) YCbCr in [0, 1] (Cb/Cr centred at 0.5) -> RGB in [0, 1].

    Args:
        y: ``(*, 3, H, W)`` (Y, Cb, Cr).

    Returns:
        ``(*, 3, H, W)`` RGB, not clamped (a JPEG decoder clamps; do it yourself if you need to).
    """
    _check_rgb(y, "ycbcr_to_rgb")
    offset = torch.tensor([0.0, 0.5, 0.5], dtype=y.dtype, device=y.device).view(3, 1, 1)
    return _apply_matrix(_YCBCR_TO_RGB, y - offset)


# --- CIELab -----------------------------------------------------------------------------------------

# linear sRGB -> XYZ, D65 (IEC 61966-2-1 / Lindbloom).
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
# The reference white is taken as XYZ of RGB (1, 1, 1) (the row sums, = D65 to 7 digits) rather than
# the separately rounded (0.95047, 1.0, 1.08883), so white maps to exactly L=100, a=b=0.
_WHITE = tuple(sum(row) for row in _RGB_TO_XYZ)
# Inverted once in float64 so the Lab round trip is exact to float precision.
_XYZ_TO_RGB = tuple(
    tuple(row) for row in torch.linalg.inv(torch.tensor(_RGB_TO_XYZ, dtype=torch.float64)).tolist()
)

_DELTA = 6.0 / 29.0  # CIE f(t) switches from cube root to its tangent line at t = delta^3.
_SRGB_LIN_THRESHOLD = 0.04045  # gamma-encoded value below which the sRGB curve is linear
_SRGB_ENC_THRESHOLD = 0.0031308  # the same threshold in linear light


def _srgb_to_linear(c: Tensor) -> Tensor:
    # torch.where back-propagates through *both* branches (multiplying the unused one by 0), and
    # 0 * inf/NaN is NaN, so the power branch is evaluated on a clamped base where it is finite.
    curve = ((c.clamp(min=_SRGB_LIN_THRESHOLD) + 0.055) / 1.055) ** 2.4
    return torch.where(c <= _SRGB_LIN_THRESHOLD, c / 12.92, curve)


def _linear_to_srgb(c: Tensor) -> Tensor:
    # x ** (1/2.4) has an infinite derivative at 0: clamp inside the power (see _srgb_to_linear).
    curve = 1.055 * c.clamp(min=_SRGB_ENC_THRESHOLD) ** (1.0 / 2.4) - 0.055
    return torch.where(c <= _SRGB_ENC_THRESHOLD, 12.92 * c, curve)


def _lab_f(t: Tensor) -> Tensor:
    # Cube root only above delta^3, where its derivative is bounded; clamping there keeps 0-valued
    # (black) pixels from producing inf * 0 = NaN gradients.
    cbrt = t.clamp(min=_DELTA**3) ** (1.0 / 3.0)
    return torch.where(t > _DELTA**3, cbrt, t / (3 * _DELTA**2) + 4.0 / 29.0)


def _lab_f_inv(f: Tensor) -> Tensor:
    return torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))


def rgb_to_lab(x: Tensor) -> Tensor:
    """sRGB in [0, 1] (D65, with the sRGB transfer curve) -> CIELab.

    Args:
        x: ``(*, 3, H, W)`` gamma-encoded sRGB, nominally in [0, 1].

    Returns:
        ``(*, 3, H, W)`` (L, a, b): L in [0, 100], a and b roughly in [-128, 127] for sRGB colours.
    """
    _check_rgb(x, "rgb_to_lab")
    xyz = _apply_matrix(_RGB_TO_XYZ, _srgb_to_linear(x))
    white = torch.tensor(_WHITE, dtype=x.dtype, device=x.device).view(3, 1, 1)
    f = _lab_f(xyz / white)
    fx, fy, fz = f.unbind(dim=-3)
    lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)
    return lab


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIELab (D65) -> sRGB in [0, 1], inverse of :func:`rgb_to_lab`.

    Args:
        lab: ``(*, 3, H, W)`` (L, a, b), L in [0, 100].

    Returns:
        ``(*, 3, H, W)`` gamma-encoded sRGB; not clamped, so out-of-gamut colours leave [0, 1].
    """
    _check_rgb(lab, "lab_to_rgb")
    big_l, a, b = lab.unbind(dim=-3)
    fy = (big_l + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    white = torch.tensor(_WHITE, dtype=lab.dtype, device=lab.device).view(3, 1, 1)
    xyz = _lab_f_inv(f) * white
    return _linear_to_srgb(_apply_matrix(_XYZ_TO_RGB, xyz))


# --- modules ----------------------------------------------------------------------------------------


class RgbToYcbcr(nn.Module):
    """Module form of :func:`rgb_to_ycbcr`."""

    def forward(self, x: Tensor) -> Tensor:
        return rgb_to_ycbcr(x)


class YcbcrToRgb(nn.Module):
    """Module form of :func:`ycbcr_to_rgb`."""

    def forward(self, y: Tensor) -> Tensor:
        return ycbcr_to_rgb(y)


class RgbToLab(nn.Module):
    """Module form of :func:`rgb_to_lab`."""

    def forward(self, x: Tensor) -> Tensor:
        return rgb_to_lab(x)


class LabToRgb(nn.Module):
    """Module form of :func:`lab_to_rgb`."""

    def forward(self, lab: Tensor) -> Tensor:
        return lab_to_rgb(lab)
