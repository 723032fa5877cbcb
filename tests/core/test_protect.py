"""The shared pipeline: photos of any size protected in one batch at the forgers' resolution."""

from __future__ import annotations

import torch

from core.forgers import create_forger
from core.image import LoadedImage, quantize
from core.methods import create_method
from core.protect import protect_images, work_size


def photo(h: int, w: int, seed: int) -> LoadedImage:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return LoadedImage(quantize(x), None, "PNG")


def test_batch_of_mixed_sizes() -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    protection = create_method("pgd", forger, eps=0.05, steps=3)
    assert work_size(protection) == 32
    images = [photo(32, 32, 0), photo(90, 60, 1), photo(20, 24, 2)]
    results = protect_images(protection, images)
    for image, result in zip(images, results, strict=True):
        assert result.x_adv.shape == image.tensor.shape
        delta = result.x_adv - image.tensor
        assert delta.abs().max() <= 0.05 + 1e-6
        assert delta.abs().max() > 0.02
        levels = (result.x_adv + 1) * 127.5
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert result.report["within_budget"] and result.report["width"] == image.size[0]
        assert 0 <= result.report["forgers"]["stargan"]["success_rate"] <= 1
    # The large photo's perturbation is smooth (upsampled), not per-pixel noise.
    big = results[1].x_adv - images[1].tensor
    assert (big[..., 1:, :] - big[..., :-1, :]).abs().mean() < big.abs().mean()
