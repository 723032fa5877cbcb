"""core.transforms.color: RGB <-> JPEG YCbCr and sRGB <-> CIELab."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.transforms import (
    LabToRgb,
    RgbToLab,
    RgbToYcbcr,
    YcbcrToRgb,
    lab_to_rgb,
    rgb_to_lab,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)


def _pixel(*values: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).view(1, 3, 1, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ycbcr_round_trip(dtype: torch.dtype) -> None:
    x = torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-5, rtol=0)
    # Also the other way, from arbitrary YCbCr in [0, 1] (not all of it is in the RGB gamut).
    assert torch.allclose(rgb_to_ycbcr(ycbcr_to_rgb(x)), x, atol=1e-5, rtol=0)


def test_ycbcr_known_values() -> None:
    # JFIF: Y = .299 R + .587 G + .114 B, Cb = .5 + (B - Y) / 1.772, Cr = .5 + (R - Y) / 1.402.
    red = rgb_to_ycbcr(_pixel(1, 0, 0)).flatten()
    assert torch.allclose(
        red, torch.tensor([0.299, 0.5 - 0.299 / 1.772, 1.0], dtype=torch.float64), atol=1e-12
    )
    assert torch.allclose(red, torch.tensor([0.299, 0.331264, 1.0], dtype=torch.float64), atol=1e-6)
    grey = rgb_to_ycbcr(_pixel(0.25, 0.25, 0.25)).flatten()
    assert torch.allclose(grey, torch.tensor([0.25, 0.5, 0.5], dtype=torch.float64), atol=1e-12)
    white = rgb_to_ycbcr(_pixel(1, 1, 1)).flatten()
    assert torch.allclose(white, torch.tensor([1.0, 0.5, 0.5], dtype=torch.float64), atol=1e-12)


def test_ycbcr_matches_pillow() -> None:
    # Pillow's RGB -> YCbCr is the JPEG one in 8-bit fixed point: agree to within one level.
    rgb = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(rgb, "RGB").convert("YCbCr"), dtype=np.float64)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float64))[None] / 255
    ours = rgb_to_ycbcr(x)[0].permute(1, 2, 0).numpy() * 255
    assert np.abs(ours - ref).max() <= 1.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lab_round_trip(dtype: torch.dtype) -> None:
    x = torch.rand(2, 3, 8, 9, generator=torch.Generator().manual_seed(1), dtype=dtype)
    x[0, :, 0, 0] = 0.0  # black and white, where the piecewise curves switch branches
    x[0, :, 0, 1] = 1.0
    atol = 1e-5 if dtype == torch.float64 else 1e-4  # float32 Lab has ~1e-5 relative precision on L~100
    assert torch.allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=atol, rtol=0)


@pytest.mark.parametrize(
    ("rgb", "lab"),
    [
        ((1, 1, 1), (100.0, 0.0, 0.0)),
        ((0, 0, 0), (0.0, 0.0, 0.0)),
        ((1, 0, 0), (53.2408, 80.0925, 67.2032)),
        ((0, 1, 0), (87.7347, -86.1827, 83.1793)),
        ((0, 0, 1), (32.2970, 79.1875, -107.8602)),
    ],
)
def test_lab_known_values(rgb: tuple[float, float, float], lab: tuple[float, float, float]) -> None:
    out = rgb_to_lab(_pixel(*rgb)).flatten()
    assert torch.allclose(out, torch.tensor(lab, dtype=torch.float64), atol=2e-3), out


def test_grey_has_no_chroma() -> None:
    grey = torch.linspace(0, 1, 11, dtype=torch.float64).view(1, 1, 1, 11).expand(1, 3, 1, 11)
    lab = rgb_to_lab(grey)
    assert lab[:, 1:].abs().max() < 1e-9
    assert torch.all(lab[0, 0, 0].diff() > 0)  # L is monotonic in grey level


def test_gradcheck() -> None:
    x = 0.1 + 0.8 * torch.rand(1, 3, 2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x.requires_grad_(True)
    for fn in (rgb_to_ycbcr, ycbcr_to_rgb, rgb_to_lab):
        assert torch.autograd.gradcheck(fn, (x,))
    lab = rgb_to_lab(x.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(lab_to_rgb, (lab,))


@pytest.mark.parametrize("value", [0.0, -0.1, 1.0, 1.2])
def test_no_nan_gradients_at_extremes(value: float) -> None:
    x = torch.full((1, 3, 2, 2), value, requires_grad=True)
    rgb_to_lab(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    lab = torch.zeros(1, 3, 2, 2, requires_grad=True)  # L = 0: black
    lab_to_rgb(lab).sum().backward()
    assert lab.grad is not None and torch.isfinite(lab.grad).all()


def test_modules_match_functions() -> None:
    x = torch.rand(1, 3, 4, 4)
    assert torch.equal(RgbToYcbcr()(x), rgb_to_ycbcr(x))
    assert torch.equal(YcbcrToRgb()(x), ycbcr_to_rgb(x))
    assert torch.equal(RgbToLab()(x), rgb_to_lab(x))
    assert torch.equal(LabToRgb()(x), lab_to_rgb(x))


def test_wrong_channel_count() -> None:
    with pytest.raises(ValueError, match="3, H, W"):
        rgb_to_lab(torch.rand(1, 4, 2, 2))
