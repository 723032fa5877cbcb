"""The shared pipeline: photos of any size protected in one batch at the forgers' resolution.

These synthetic photos hold no face a detector finds: ``whole_image=True`` protects them whole (the faces
themselves are tested in test_faces.py)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from core.forgers import create_forger
from core.image import LoadedImage, quantize
from core.methods import create_method, method_class, method_names
from core.protect import protect_images, work_size


def photo(h: int, w: int, seed: int) -> LoadedImage:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    return LoadedImage(quantize(x), None, "PNG")


@pytest.mark.parametrize("name", method_names())
def test_batch_of_mixed_and_odd_sizes(name: str) -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    # One-pass (generator) methods: a random tiny generator (no shipped weights are needed).
    extra = {"pretrained": False, "config": "tiny"} if getattr(method_class(name), "one_pass", False) else {}
    protection = create_method(name, forger, steps=3, **extra)
    assert work_size(protection) == 32
    images = [photo(32, 32, 0), photo(90, 60, 1), photo(20, 24, 2), photo(33, 31, 3)]
    results = protect_images(protection, images, whole_image=True)
    for image, result in zip(images, results, strict=True):
        assert result.x_adv.shape == image.tensor.shape
        delta = result.x_adv - image.tensor
        assert delta.abs().max() <= protection.linf_cap() + 1e-6
        assert delta.abs().max() > 1 / 255
        levels = (result.x_adv + 1) * 127.5
        assert torch.allclose(levels, levels.round(), atol=1e-4)
        assert result.report["within_budget"] is True, image.size
        assert result.report["width"] == image.size[0] and result.report["height"] == image.size[1]
        rate = result.report["forgers"]["stargan"]["success_rate"]  # a share of this photo's edits
        assert result.targets is not None
        edits = result.targets.shape[1]
        assert rate * edits == pytest.approx(round(rate * edits))


def test_large_photo_gets_a_smooth_perturbation() -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    image = photo(96, 64, 1)
    [result] = protect_images(create_method("pgd", forger, eps=0.05, steps=3), [image], whole_image=True)
    big = result.x_adv - image.tensor
    # Upsampled from the working size, not per-pixel noise: neighbours are close.
    assert (big[..., 1:, :] - big[..., :-1, :]).abs().mean() < big.abs().mean()


@pytest.mark.parametrize(("samples", "eot_samples", "drawn"), [(1, 1, 1), (3, 1, 3), (1, 4, 4)])
def test_framings_drawn_per_step_are_the_asked_ones_or_the_methods_own(
    samples: int, eot_samples: int, drawn: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    protection = create_method("pgd", forger, steps=1, eot_samples=eot_samples)
    seen: list[int] = []
    perturb = type(protection).perturb

    def spy(self: Any, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Any) -> torch.Tensor:
        seen.append(through.samples)
        return perturb(self, x, targets, gen, through)

    monkeypatch.setattr(type(protection), "perturb", spy)
    protect_images(protection, [photo(32, 32, 0)], whole_image=True, verify=False, samples=samples)
    assert seen == [drawn]
    with pytest.raises(ValueError, match="samples"):
        protect_images(protection, [photo(32, 32, 0)], whole_image=True, verify=False, samples=0)


def test_only_named_edits_are_covered() -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    protection = create_method("pgd", forger, steps=1)
    [result] = protect_images(protection, [photo(32, 32, 0)], only=["Male"], whole_image=True)
    assert result.report["within_budget"]
    with pytest.raises(ValueError, match="unknown target"):
        protect_images(protection, [photo(32, 32, 0)], only=["Bald"])


def test_protect_until_retries_only_the_photos_short_of_min_success_and_says_which_attempt() -> None:
    from types import SimpleNamespace

    from core.protect import protect_until

    until: Any = protect_until  # strings stand in for protections and photos

    calls: list[tuple[str, list[str], int]] = []
    rates = {("weak", "a"): 0.9, ("weak", "b"): 0.2, ("strong", "b"): 0.6}

    def run(prot: str, photos: list[str], attempt: int) -> list[SimpleNamespace]:
        calls.append((prot, list(photos), attempt))
        return [SimpleNamespace(report={"receipt": {"min_success_rate": rates[(prot, p)]}}) for p in photos]

    done = until(run, "weak", ["a", "b"], 0.5, [lambda: "strong"])
    assert calls == [("weak", ["a", "b"], 1), ("strong", ["b"], 2)]
    assert [(d.protection, d.attempts) for d in done] == [("weak", 1), ("strong", 2)]
    calls.clear()
    until(run, "weak", ["a", "b"], None, [lambda: "strong"])
    assert calls == [("weak", ["a", "b"], 1)]  # no requirement: no retry
