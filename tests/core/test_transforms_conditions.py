"""core.transforms.conditions: the real evaluation conditions, by name."""

from __future__ import annotations

import pytest
import torch

from core.image import quantize
from core.transforms import apply_condition, condition_names, gaussian_blur, jpeg, rescale
from core.transforms.color import rgb_to_ycbcr, ycbcr_to_rgb
from core.transforms.filters import box_blur


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.rand(2, 3, 6, 6, generator=g), size=(24, 32), mode="bilinear"
    )
    return quantize(smooth * 1.6 - 0.8 + 0.1 * torch.randn(2, 3, 24, 32, generator=g))


def test_names() -> None:
    assert condition_names() == ["clean", "jpeg75", "jpeg90", "jpeg75-444", "webp80", "chroma420", "resize0.5",
                                 "blur1", "avgblur3", "noise"]


@pytest.mark.parametrize("name", condition_names())
def test_outputs_are_8bit_images(name: str) -> None:
    x = _image().requires_grad_(True)
    out = apply_condition(name, x)
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert out.abs().max() <= 1 and torch.equal(quantize(out), out)
    if name == "clean":
        assert torch.equal(out, x)
    else:
        assert (out - x).abs().mean() > 2 / 255  # each real condition changes the image visibly


def test_conditions_are_the_real_operations() -> None:
    x = _image()
    assert torch.equal(apply_condition("jpeg75", x), jpeg(x, 75))
    assert torch.equal(apply_condition("jpeg90", x), jpeg(x, 90))
    assert torch.equal(apply_condition("jpeg75-444", x), jpeg(x, 75, subsampling="4:4:4"))
    assert torch.equal(apply_condition("resize0.5", x), quantize(rescale(x, 0.5)))
    assert torch.equal(apply_condition("blur1", x), quantize(gaussian_blur(x, 1.0)))
    assert torch.equal(apply_condition("avgblur3", x), quantize(box_blur(x, 3)))
    # Stronger compression loses more.
    assert (apply_condition("jpeg75", x) - x).abs().mean() > (apply_condition("jpeg90", x) - x).abs().mean()


def test_unknown_condition_lists_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown condition 'jpeg50'.*clean, jpeg75, jpeg90, jpeg75-444, webp80, chroma420"
    ):
        apply_condition("jpeg50", _image())


def test_chroma420_is_what_jpeg_subsampling_does_to_chroma() -> None:
    # A pixel-level chroma checkerboard on a flat luma: 4:2:0 averages it away, 4:4:4 keeps it.
    ycc = torch.full((1, 3, 16, 16), 0.5)
    board = (torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 0.2 - 0.1
    ycc[0, 1] += board
    x = quantize(ycbcr_to_rgb(ycc) * 2 - 1)
    sub = apply_condition("chroma420", x)
    got = rgb_to_ycbcr((sub + 1) / 2)
    assert (got[0, 1] - 0.5).abs().max() < 2 / 255  # the chroma pattern is gone ...
    assert (got[0, 0] - rgb_to_ycbcr((x + 1) / 2)[0, 0]).abs().max() < 2 / 255  # ... luma kept
    real = jpeg(x, 100)  # libjpeg at quality 100 still subsamples chroma 4:2:0
    assert (sub - real).abs().mean() < 0.25 * (x - real).abs().mean()
    assert (jpeg(x, 100, subsampling="4:4:4") - x).abs().mean() < 0.25 * (x - real).abs().mean()
    # Chroma already constant over 2x2 blocks passes through (up to 8-bit rounding).
    smooth = quantize(torch.nn.functional.interpolate(_image()[:, :, ::2, ::2], scale_factor=2, mode="nearest"))
    assert (apply_condition("chroma420", smooth) - smooth).abs().max() <= 2 / 255 + 1e-6


def test_webp_is_a_lossy_round_trip_and_noise_is_seeded() -> None:
    x = _image()
    w = apply_condition("webp80", x)
    assert 0 < float((w - x).abs().mean()) < 0.1  # lossy, but the same picture
    n1, n2 = apply_condition("noise", x), apply_condition("noise", x)
    assert torch.equal(n1, n2) and not torch.equal(n1, x)
    # about NOISE_SIGMA of Gaussian noise (before clipping and 8-bit rounding)
    assert 0.01 < float((n1 - x).std()) < 0.03
