"""JPEG compression: the real thing (through Pillow/libjpeg) and a differentiable approximation.

- :func:`jpeg` is what a platform does to an uploaded photo: quantise to 8 bit, encode, decode. It is
  used to *evaluate* protections and has no gradient.
- :func:`diff_jpeg` mirrors libjpeg's pipeline step by step (JFIF YCbCr, 4:2:0 chroma by 2x2 averaging,
  8x8 orthonormal DCT, the IJG tables scaled by quality exactly as ``jpeg_set_quality`` does, a
  differentiable rounding, the inverse, "fancy" bilinear chroma upsampling) so that protection
  methods can optimise *through* it (expectation over transformation).
"""

from __future__ import annotations

import functools
import io
import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from core.image import to_uint8
from core.transforms.color import rgb_to_ycbcr, ycbcr_to_rgb

Subsampling = Literal["4:2:0", "4:4:4"]
Rounding = Literal["cubic", "ste"]

# ITU-T T.81 Annex K tables (the IJG defaults), natural row-major order: row = vertical frequency.
LUMINANCE_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
CHROMINANCE_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


def _check_quality(quality: int) -> None:
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")


def _check_images(x: Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected an (N, 3, H, W) tensor, got shape {tuple(x.shape)}")


def quality_to_scale(quality: int) -> int:
    """libjpeg's ``jpeg_quality_scaling``: quality 1..100 -> percentage applied to the base tables."""
    _check_quality(quality)
    return 5000 // quality if quality < 50 else 200 - 2 * quality


def quantization_table(quality: int, chroma: bool = False) -> Tensor:
    """The 8x8 quantisation table libjpeg (and hence Pillow) writes for ``quality``, as float64.

    ``jpeg_add_quant_table``: ``(base * scale + 50) // 100`` clamped to [1, 255] (baseline JPEG).
    """
    scale = quality_to_scale(quality)
    base = torch.tensor(CHROMINANCE_TABLE if chroma else LUMINANCE_TABLE, dtype=torch.int64)
    return ((base * scale + 50) // 100).clamp(1, 255).to(torch.float64)


# --- real JPEG --------------------------------------------------------------------------------------


def jpeg(x: Tensor, quality: int, subsampling: str = "4:2:0") -> Tensor:
    """A real JPEG round trip through Pillow (libjpeg-turbo) of each image in a batch.

    Args:
        x: ``(N, 3, H, W)`` in [-1, 1]; quantised to 8 bit (rounded, clamped) before encoding.
        quality: libjpeg quality, 1..100.
        subsampling: chroma subsampling, ``"4:2:0"``, ``"4:2:2"`` or ``"4:4:4"``.

    Returns:
        ``(N, 3, H, W)`` in [-1, 1] on the 8-bit grid, same dtype and device as ``x``. Not
        differentiable (the result is detached); use :func:`diff_jpeg` to optimise through JPEG.
    """
    _check_images(x, "jpeg")
    _check_quality(quality)
    if subsampling not in ("4:2:0", "4:2:2", "4:4:4"):
        raise ValueError(f"jpeg: subsampling must be '4:2:0', '4:2:2' or '4:4:4', got {subsampling!r}")
    return _round_trip(x, "JPEG", quality=quality, subsampling=subsampling)


def webp(x: Tensor, quality: int) -> Tensor:
    """A real lossy WebP round trip through Pillow (libwebp, 4:2:0 chroma), as :func:`jpeg`."""
    _check_images(x, "webp")
    _check_quality(quality)
    return _round_trip(x, "WEBP", quality=quality)


def _round_trip(x: Tensor, fmt: str, **options: object) -> Tensor:
    out = []
    for img in x.detach():
        buf = io.BytesIO()
        Image.fromarray(to_uint8(img), "RGB").save(buf, fmt, **options)
        with Image.open(io.BytesIO(buf.getvalue())) as decoded:
            out.append(torch.from_numpy(np.asarray(decoded.convert("RGB")).transpose(2, 0, 1).copy()))
    # Scale in the target dtype (as core.image.from_uint8 / quantize do in float32), so the result lies
    # exactly on the 8-bit grid of that dtype: quantize(jpeg(x)) == jpeg(x) in float64 too.
    return torch.stack(out).to(device=x.device, dtype=x.dtype) / 127.5 - 1


# --- differentiable JPEG ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """Orthonormal 8-point DCT-II matrix ``D[k, n]``; ``D @ B @ D.T`` is JPEG's 2-D forward DCT."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    d = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    d[0] /= math.sqrt(2)
    return d.to(device=device, dtype=dtype)


def _blocks(x: Tensor) -> Tensor:
    """``(N, C, H, W)`` with H, W multiples of 8 -> ``(N, C, H/8, W/8, 8, 8)``."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)


def _unblocks(b: Tensor) -> Tensor:
    n, c, bh, bw = b.shape[:4]
    return b.permute(0, 1, 2, 4, 3, 5).reshape(n, c, bh * 8, bw * 8)


def _round(x: Tensor, rounding: Rounding) -> Tensor:
    r = torch.round(x)
    if rounding == "cubic":
        # Shin & Song 2017: value within 0.125 of round(x), derivative 3 (x - round(x))^2, which is
        # small for coefficients that quantise "firmly" -- a useful signal of what JPEG destroys.
        return r + (x - r) ** 3
    # Straight-through: exact rounding forwards, identity backwards.
    return x + (r - x).detach()


def _quantize_dequantize(x: Tensor, table: Tensor, rounding: Rounding) -> Tensor:
    """Round a ``(N, C, H, W)`` plane's block DCT coefficients to multiples of ``table``, back to pixels."""
    d = _dct_matrix(x.device, x.dtype)
    q = table.to(device=x.device, dtype=x.dtype)
    coeffs = d @ _blocks(x) @ d.T
    coeffs = _round(coeffs / q, rounding) * q
    return _unblocks(d.T @ coeffs @ d)


def diff_jpeg(
    x: Tensor, quality: int, subsampling: Subsampling = "4:2:0", rounding: Rounding = "cubic"
) -> Tensor:
    """Differentiable approximation of :func:`jpeg` (libjpeg's pipeline with a smooth rounding).

    Steps: [-1, 1] -> [0, 255] JFIF YCbCr, level shift by -128; chroma averaged over 2x2 (4:2:0);
    replicate-pad every plane to whole 8x8 blocks (whole 16x16 MCUs for 4:2:0, as libjpeg does);
    8x8 DCT; divide by the quality-scaled IJG table, round (``rounding``), multiply back; inverse DCT;
    chroma upsampled bilinearly (= libjpeg's default "fancy" triangular upsampling); crop; back to RGB;
    clamp to [-1, 1] as the decoder does. The decoder's final rounding to 8 bit is not modelled (it
    is at most half a level).

    Args:
        x: ``(N, 3, H, W)`` in [-1, 1], any H and W; clamped to [-1, 1] first, like the real encoder.
        quality: libjpeg quality, 1..100.
        subsampling: ``"4:2:0"`` (the default of Pillow and most encoders) or ``"4:4:4"``.
        rounding: ``"cubic"`` (Shin & Song 2017, default) or ``"ste"`` (straight-through estimator).

    Returns:
        ``(N, 3, H, W)`` in [-1, 1], differentiable w.r.t. ``x``.
    """
    _check_images(x, "diff_jpeg")
    if subsampling not in ("4:2:0", "4:4:4"):
        raise ValueError(f"diff_jpeg: subsampling must be '4:2:0' or '4:4:4', got {subsampling!r}")
    if rounding not in ("cubic", "ste"):
        raise ValueError(f"diff_jpeg: rounding must be 'cubic' or 'ste', got {rounding!r}")
    y_table = quantization_table(quality)
    c_table = quantization_table(quality, chroma=True)

    h, w = x.shape[-2:]
    mcu = 16 if subsampling == "4:2:0" else 8
    pad_h, pad_w = -h % mcu, -w % mcu
    # libjpeg fills partial MCUs by replicating the last row/column, before chroma downsampling.
    x = F.pad(x.clamp(-1, 1), (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x.clamp(-1, 1)

    ycc = rgb_to_ycbcr((x + 1) / 2) * 255.0 - 128.0
    luma, chroma = ycc[:, :1], ycc[:, 1:]
    luma = _quantize_dequantize(luma, y_table, rounding)
    if subsampling == "4:2:0":
        chroma = F.avg_pool2d(chroma, 2)
        chroma = _quantize_dequantize(chroma, c_table, rounding)
        # align_corners=False bilinear x2 weighs neighbours 3/4, 1/4 and replicates edges: exactly
        # libjpeg's h2v2 "fancy" upsampling (9/16, 3/16, 3/16, 1/16).
        chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    else:
        chroma = _quantize_dequantize(chroma, c_table, rounding)

    rgb = ycbcr_to_rgb((torch.cat([luma, chroma], dim=1) + 128.0) / 255.0)
    return (rgb[..., :h, :w] * 2 - 1).clamp(-1, 1)


# --- modules ----------------------------------------------------------------------------------------


class JPEG(nn.Module):
    """Module form of :func:`jpeg` (real, non-differentiable)."""

    def __init__(self, quality: int, subsampling: str = "4:2:0") -> None:
        super().__init__()
        _check_quality(quality)
        self.quality = quality
        self.subsampling = subsampling

    def forward(self, x: Tensor) -> Tensor:
        return jpeg(x, self.quality, self.subsampling)


class DiffJPEG(nn.Module):
    """Module form of :func:`diff_jpeg`."""

    def __init__(
        self, quality: int, subsampling: Subsampling = "4:2:0", rounding: Rounding = "cubic"
    ) -> None:
        super().__init__()
        _check_quality(quality)
        self.quality = quality
        self.subsampling: Subsampling = subsampling
        self.rounding: Rounding = rounding

    def forward(self, x: Tensor) -> Tensor:
        return diff_jpeg(x, self.quality, self.subsampling, self.rounding)
