"""core.transforms.conditions: the real evaluation conditions, by name."""

from __future__ import annotations

import pytest
import torch

from core.image import quantize
from core.transforms import apply_condition, condition_names, gaussian_blur, jpeg, rescale
from core.transforms.filters import box_blur


def _image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(
        torch.rand(2, 3, 6, 6, generator=g), size=(24, 32), mode="bilinear"
    )
    return quantize(smooth * 1.6 - 0.8 + 0.1 * torch.randn(2, 3, 24, 32, generator=g))


def test_names() -> None:
    assert condition_names() == ["clean", "jpeg75", "jpeg90", "resize0.5", "blur1", "avgblur3"]


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
    assert torch.equal(apply_condition("resize0.5", x), quantize(rescale(x, 0.5)))
    assert torch.equal(apply_condition("blur1", x), quantize(gaussian_blur(x, 1.0)))
    assert torch.equal(apply_condition("avgblur3", x), quantize(box_blur(x, 3)))
    # Stronger compression loses more.
    assert (apply_condition("jpeg75", x) - x).abs().mean() > (apply_condition("jpeg90", x) - x).abs().mean()


def test_unknown_condition_lists_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown condition 'jpeg50'.*clean, jpeg75, jpeg90, resize0\.5, blur1, avgblur3"
    ):
        apply_condition("jpeg50", _image())
