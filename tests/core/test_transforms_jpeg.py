"""core.transforms.jpeg: real JPEG through Pillow and the differentiable approximation."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from core.image import encode_image, load_image, quantize
from core.transforms import JPEG, DiffJPEG, diff_jpeg, jpeg, quantization_table
from core.transforms.jpeg import Rounding

LEVEL = 2 / 255  # one 8-bit step on the [-1, 1] scale


def smooth_image(h: int = 64, w: int = 64) -> torch.Tensor:
    """Low-frequency colour gradients and sinusoids (a stand-in for skin and background), in [-1, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    r = 0.6 * torch.sin(2 * math.pi * xx * 1.5) * torch.cos(2 * math.pi * yy)
    g = 0.8 * (xx - 0.5) + 0.3 * torch.sin(2 * math.pi * yy * 2)
    b = 0.5 * torch.cos(2 * math.pi * (xx + yy))
    return quantize(0.9 * torch.stack([r, g, b])[None])


def noisy_image(h: int = 64, w: int = 64) -> torch.Tensor:
    """The smooth image plus strong white noise (std 0.15 ~ 19 levels): lots of high-frequency content."""
    noise = 0.15 * torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))
    return quantize(smooth_image(h, w) + noise)


@pytest.mark.parametrize("quality", [1, 10, 25, 50, 75, 90, 95, 100])
def test_quantization_tables_match_libjpeg(quality: int) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, "JPEG", quality=quality)
    with Image.open(buf) as im:
        tables = im.quantization  # type: ignore[attr-defined]  # natural (row-major) order in Pillow
    assert quantization_table(quality).flatten().tolist() == tables[0]
    assert quantization_table(quality, chroma=True).flatten().tolist() == tables[1]


def test_jpeg_matches_encode_image() -> None:
    # jpeg() is a batched version of what core.image does when asked for a JPEG (Pillow's 4:2:0 default).
    x = noisy_image(24, 40)
    ref = load_image(encode_image(x, "JPEG", quality=75)).tensor
    assert torch.equal(jpeg(x, 75), ref)


def test_jpeg_batch_shape_grid_and_dtype() -> None:
    x = torch.cat([smooth_image(20, 28), noisy_image(20, 28)]).double()
    out = jpeg(x, 75)
    assert out.shape == x.shape and out.dtype == torch.float64 and not out.requires_grad
    assert torch.equal(quantize(out), out) and out.abs().max() <= 1
    assert torch.equal(out[1:], jpeg(x[1:], 75))  # images are encoded independently
    assert (out - x).abs().mean() > LEVEL  # it did something


def test_jpeg_quality_orders_distortion() -> None:
    x = noisy_image()
    errors = [(jpeg(x, q) - x).abs().mean().item() for q in (50, 75, 95)]
    assert errors[0] > errors[1] > errors[2]
    # 4:4:4 keeps the chroma resolution, so it loses less than 4:2:0 on a noisy image.
    assert (jpeg(x, 95, "4:4:4") - x).abs().mean() < errors[2]


def test_jpeg_rejects_bad_arguments() -> None:
    x = smooth_image(8, 8)
    with pytest.raises(ValueError, match="quality"):
        jpeg(x, 0)
    with pytest.raises(ValueError, match="subsampling"):
        jpeg(x, 75, "4:1:1")
    with pytest.raises(ValueError, match="N, 3, H, W"):
        diff_jpeg(x[0], 75)


# Measured mean |diff_jpeg - jpeg| on [-1, 1] (cubic / ste rounding, this libjpeg-turbo):
#   q75, 4:2:0: smooth 64x64 0.0076 / 0.0079, noisy 64x64 0.0151 / 0.0135, smooth 37x53 0.0089 / 0.0094.
# The floor is libjpeg's integer pipeline (8-bit YCbCr, integer DCT, rounded output): even at q100
# real JPEG differs from its input by ~0.5 levels and from diff_jpeg by ~0.65 levels (0.005). On noise,
# rounding decisions near a quantisation boundary flip and each flip costs a whole table step.
# Bounds: smooth < 1.5 levels (0.012), noisy < 0.02 (2.5 levels), ~30 % above the measurements, and in
# every case the approximation must be far closer to real JPEG than the untouched input is.
@pytest.mark.parametrize("rounding", ["cubic", "ste"])
@pytest.mark.parametrize(
    ("image", "bound"),
    [
        (smooth_image(), 0.012),
        (noisy_image(), 0.02),
        (smooth_image(37, 53), 0.012),
        (noisy_image(37, 53), 0.02),
    ],
    ids=["smooth", "noisy", "smooth-odd-size", "noisy-odd-size"],
)
def test_diff_jpeg_close_to_real_jpeg(image: torch.Tensor, bound: float, rounding: Rounding) -> None:
    real = jpeg(image, 75)
    approx = diff_jpeg(image, 75, rounding=rounding)
    assert approx.shape == image.shape
    error = (approx - real).abs().mean().item()
    assert error < bound
    assert error < 0.6 * (image - real).abs().mean().item()


def test_diff_jpeg_444_close_to_real_jpeg() -> None:
    # Without chroma averaging, noise reaches the chroma quantiser too: measured 0.0215 (cubic) at q75.
    x = noisy_image()
    real = jpeg(x, 75, "4:4:4")
    error = (diff_jpeg(x, 75, "4:4:4") - real).abs().mean().item()
    assert error < 0.028 and error < 0.25 * (x - real).abs().mean().item()


@pytest.mark.parametrize("rounding", ["cubic", "ste"])
def test_diff_jpeg_gradients(rounding: Rounding) -> None:
    x = noisy_image(24, 24).requires_grad_(True)
    out = diff_jpeg(x, 75, rounding=rounding)
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad != 0).float().mean() > 0.5  # almost every pixel gets a gradient


def test_diff_jpeg_keeps_flat_image_flat() -> None:
    # A flat image only has DC coefficients: it stays flat, off by at most half a DC step per channel
    # (q50: luma 16 / 8 / 2 = 1 level, chroma 17 / 8 / 2 ~ 1.06 levels, times <= 1.772 back in RGB).
    x = torch.full((1, 3, 16, 16), 0.2, dtype=torch.float64)
    out = diff_jpeg(x, 50, rounding="ste")
    assert out.dtype == torch.float64
    assert out.std(dim=(2, 3)).max() < 1e-9
    assert (out - x).abs().max() < 3 * LEVEL


def test_modules_match_functions() -> None:
    x = smooth_image(16, 16)
    assert torch.equal(JPEG(75)(x), jpeg(x, 75))
    assert torch.equal(DiffJPEG(75, rounding="ste")(x), diff_jpeg(x, 75, rounding="ste"))
    with pytest.raises(ValueError, match="quality"):
        DiffJPEG(101)
