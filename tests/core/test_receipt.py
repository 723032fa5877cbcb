"""The protection receipt: per-condition success rates on the delivered photo."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from core.faces import Frame
from core.forgers import create_forger
from core.image import LoadedImage, load_image, quantize
from core.methods import create_method
from core.protect import protect_images
from core.receipt import RECEIPT_CONDITIONS, attacker_crops, photo_receipt, verdict
from core.targets import fixed_targets
from core.transforms.conditions import apply_condition


def smooth(h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
    return quantize(torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False))


@pytest.fixture(scope="module")
def forger() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_forger("stargan", config="tiny", pretrained=False)


def test_identical_photo_is_never_protected(forger: torch.nn.Module) -> None:
    x = smooth(48, 40, 0)
    targets = fixed_targets(forger.attributes)[None]
    r = photo_receipt([forger], x, x.clone(), None, targets, size=32)
    assert list(r["conditions"]) == list(RECEIPT_CONDITIONS)
    for cond in RECEIPT_CONDITIONS:
        entry = r["conditions"][cond]
        assert entry["success_rate"] == 0.0
        # measured against the clean photo after the same condition: the condition alone changes nothing
        assert entry["forgers"]["stargan"]["distortion"] == 0.0
    assert r["min_success_rate"] == 0.0 and r["threshold"] == 0.05


class Counting(torch.nn.Module):
    """A forger that counts the faces it edits."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.name, self.attributes, self.faces = inner, inner.name, inner.attributes, 0

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        self.faces += x.shape[0]
        return self.inner(x, c)


def test_each_condition_is_measured_against_the_clean_photo_under_it(forger: torch.nn.Module) -> None:
    """A small face, upscaled to the forger's input: a 0.5x resize or a blur alone moves its edit a lot, so
    the reference of each condition is the clean photo after that very condition."""
    from core.methods import expand_targets
    from core.receipt import conditioned_crops

    x = quantize((smooth(64, 64, 1) + 0.2 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4)))
                 .clamp(-1, 1))
    frames = [Frame(30.0, 34.0, 12.0)]  # a 12 px face, upscaled to 32 px
    targets = fixed_targets(forger.attributes)[None]
    counting = Counting(forger)
    r = photo_receipt([counting], x, x.clone(), frames, targets, size=32)
    edits = targets.shape[1]
    assert counting.faces == 2 * edits * len(RECEIPT_CONDITIONS)
    moved = {}
    for cond in RECEIPT_CONDITIONS:
        assert r["conditions"][cond]["forgers"]["stargan"]["distortion"] == 0.0, cond
        alone = forger(*expand_targets(conditioned_crops(cond, x, frames, 32), targets))
        clean = forger(*expand_targets(conditioned_crops("clean", x, frames, 32), targets))
        moved[cond] = float((alone - clean).pow(2).mean())
    # against the unconditioned clean edits, the resize alone would have counted as protection
    assert moved["resize0.5"] > r["threshold"]


def test_weakest_condition_is_the_minimum(forger: torch.nn.Module) -> None:
    x = smooth(64, 64, 1)
    # Per-pixel noise: JPEG and resizing remove much of it, so the conditions differ.
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2)).sign() * 0.3
    x_adv = quantize((x + noise).clamp(-1, 1))
    targets = fixed_targets(forger.attributes)[None]
    r = photo_receipt([forger], x, x_adv, None, targets, size=32)
    rates = {c: v["success_rate"] for c, v in r["conditions"].items()}
    assert all(0.0 <= v <= 1.0 for v in rates.values())
    assert r["min_success_rate"] == min(rates.values()) and rates[r["weakest"]] == r["min_success_rate"]
    distortions = {c: v["forgers"]["stargan"]["distortion"] for c, v in r["conditions"].items()}
    assert distortions["clean"] > distortions["resize0.5"]  # the resize averages the noise away


def test_face_frames_are_cropped_from_the_whole_photo(forger: torch.nn.Module) -> None:
    x = smooth(80, 100, 3)
    frames = [Frame(30.0, 40.0, 40.0), Frame(70.0, 40.0, 30.0, angle=0.2)]
    crops = attacker_crops(x, frames, 32)
    assert crops.shape == (2, 3, 32, 32)
    targets = fixed_targets(forger.attributes)[None].expand(2, -1, -1)
    r = photo_receipt([forger], x, x.clone(), frames, targets, size=32, conditions=("clean", "jpeg75"))
    assert list(r["conditions"]) == ["clean", "jpeg75"]
    with pytest.raises(ValueError, match="targets"):
        photo_receipt([forger], x, x, frames, targets[:1], size=32)
    with pytest.raises(ValueError, match="photos"):
        photo_receipt([forger], x, x[..., :50], None, targets[:1], size=32)


def test_protect_images_attaches_the_receipt_and_measures_the_jpeg_it_delivers(forger: torch.nn.Module) -> None:
    protection = create_method("pgd", forger, steps=2)
    image = LoadedImage(smooth(40, 56, 4), None, "PNG")
    [png] = protect_images(protection, [image], whole_image=True)
    receipt = png.report["receipt"]
    assert list(receipt["conditions"]) == list(RECEIPT_CONDITIONS) and png.encoded is None
    # a photo protected whole says so in words, so that nobody reads it as a protected face
    assert receipt["scope"] == "whole_photo" and "No face was found" in receipt["note"]
    assert receipt["conditions"]["clean"]["forgers"]["stargan"] == png.report["forgers"]["stargan"]
    [jpg] = protect_images(protection, [image], whole_image=True, output_format="JPEG")
    assert jpg.encoded is not None and jpg.encoded[:3] == b"\xff\xd8\xff"
    assert torch.equal(load_image(jpg.encoded).tensor, jpg.x_adv)  # measured what the file decodes to
    assert jpg.report["linf"] == pytest.approx(float((jpg.x_adv - image.tensor).abs().max()))
    [plain] = protect_images(protection, [image], whole_image=True, verify=False)
    assert "receipt" not in plain.report
    [untouched] = protect_images(protection, [image])  # no face, not protected whole: nothing to receipt
    assert untouched.report["protection"] == "no_face" and "receipt" not in untouched.report


def test_previews_show_the_perturbation_and_both_rows_of_edits(forger: torch.nn.Module) -> None:
    from core.previews import edits_preview, perturbation_preview

    protection = create_method("pgd", forger, steps=2)
    image = LoadedImage(smooth(40, 56, 5), None, "PNG")
    [result] = protect_images(protection, [image], only=["Male", "Young"], whole_image=True)
    amp = perturbation_preview(image.tensor, result.x_adv, amplification=10)
    assert amp.shape == image.tensor.shape
    delta = result.x_adv - image.tensor
    assert torch.allclose(amp, quantize((delta * 10).clamp(-1, 1)))
    flat = perturbation_preview(image.tensor, image.tensor)  # unchanged: one mid-grey level everywhere
    assert flat.unique().numel() == 1 and flat.abs().max() <= 1 / 255 + 1e-6
    grid, columns = edits_preview(forger, result, size=32)
    assert columns == ["input", "Male", "Young"]
    pad = 2
    assert grid.shape == (1, 3, 2 * (32 + pad) + pad, 3 * (32 + pad) + pad)
    # The first cell of the bottom row is the protected photo as the forger sees it, not the original.
    top, bottom = grid[..., pad : pad + 32, pad : pad + 32], grid[..., 2 * pad + 32 : 2 * pad + 64, pad : pad + 32]
    assert not torch.equal(top, bottom)
    [untouched] = protect_images(protection, [image])
    with pytest.raises(ValueError, match="nothing was protected"):
        edits_preview(forger, untouched, size=32)


@pytest.mark.parametrize("condition", ["clean", "jpeg90", "jpeg75", "resize0.5", "blur1"])
def test_conditions_on_face_windows_equal_the_whole_photo(condition: str) -> None:
    from core.receipt import conditioned_crops, face_window

    g = torch.Generator().manual_seed(7)
    x = quantize((smooth(360, 420, 8) + 0.1 * torch.randn(1, 3, 360, 420, generator=g)).clamp(-1, 1))
    frames = [Frame(101.3, 97.8, 90.0, 0.1), Frame(300.5, 250.2, 120.0, -0.05), Frame(30.0, 330.0, 50.0)]
    for frame in frames:
        x0, y0, x1, y1 = face_window(frame, 420, 360)
        assert x0 % 16 == 0 and y0 % 16 == 0 and 0 <= x0 < x1 <= 420 and 0 <= y0 < y1 <= 360
    windowed = conditioned_crops(condition, x, frames, 32)
    whole = attacker_crops(apply_condition(condition, x), frames, 32)
    # Identical up to float rounding of the resampling: the window holds everything the crop depends on.
    assert (windowed - whole).abs().max() < 1e-4, condition


@pytest.mark.slow  # a 2.7-megapixel photo through the whole pipeline
def test_a_large_photo_protected_whole_is_measured_at_a_bounded_size(
    forger: torch.nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decompression bomb without a face: the receipt's conditions and the quality metrics never run on all
    of its pixels (a 40-megapixel photo took half an hour and 5.5 GB in them)."""
    from core import evaluate, protect, receipt

    seen: list[tuple[int, ...]] = []
    real_condition, real_ssim = receipt.apply_condition, evaluate.metrics.ssim

    def condition(name: str, x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape[-2:]))
        return real_condition(name, x)

    def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(a.shape[-2:]))
        return real_ssim(a, b)

    monkeypatch.setattr(receipt, "apply_condition", condition)
    monkeypatch.setattr(evaluate.metrics, "ssim", ssim)
    photo = LoadedImage(tensor=smooth(1300, 2100, 3), alpha=None, format=None)
    pgd = create_method("pgd", [forger], eps=0.05, steps=1, seed=0)
    [result] = protect_images(pgd, [photo], whole_image=True, receipt_conditions=("clean", "jpeg75", "blur1"))
    assert result.report["protection"] == "whole_image"
    assert seen and max(max(s) for s in seen) <= receipt.WHOLE_PHOTO_SIDE == protect.QUALITY_SIDE
    # PSNR is still of every pixel
    mse = float((result.x_adv - photo.tensor).double().pow(2).mean())
    assert result.report["psnr"] == pytest.approx(10 * torch.log10(torch.tensor(4.0 / mse)).item(), rel=1e-6)


def _receipt(rates: dict[str, float | None], blocked: tuple[float, float] | None = None,
             scope: str = "faces") -> dict[str, Any]:
    known = {c: r for c, r in rates.items() if r is not None}
    weakest = min(known, key=lambda c: known[c]) if known else None
    conditions: dict[str, dict[str, Any]] = {c: {"success_rate": r} for c, r in rates.items()}
    if blocked:
        conditions["clean"]["edit_blocked"] = blocked[0]
    return {"conditions": conditions, "min_success_rate": known[weakest] if weakest else None, "weakest": weakest,
            "min_edit_blocked": blocked[1] if blocked else None, "scope": scope}


@pytest.mark.parametrize(("rates", "level", "text"), [
    ({"clean": 1.0, "jpeg75": 0.8}, "protected",
     "Protected against these editors: their edits of this photo come out broken (100 % of them broken as "
     "delivered, 80 % after JPEG quality 75)."),
    ({"clean": 0.6, "resize0.5": 0.0}, "partly",
     "Partly protected: some of these editors' edits of this photo come out broken (60 % of them broken as "
     "delivered, 0 % after a resize to half and back); the others still work."),
    ({"clean": 0.4, "jpeg90": 0.2}, "partly", None),
    ({"clean": 0.0, "jpeg90": 0.0}, "not_protected",
     "Not protected against these editors: their edits of this photo still work (0 % of them broken, as "
     "delivered and after what platforms do to photos)."),
    ({"clean": 0.1, "jpeg90": 0.15}, "not_protected",
     "Not protected against these editors: their edits of this photo still work (10 % of them broken as "
     "delivered, more after what platforms do to photos)."),
    ({"clean": 0.19, "jpeg90": 0.19}, "not_protected", None),
    ({"clean": None}, "not_protected", "Nothing could be measured: the forgers' edits were not tried."),
])
def test_verdict_in_words(rates: dict[str, float | None], level: str, text: str | None) -> None:
    got = verdict(_receipt(rates))
    assert got["level"] == level
    if text is not None:
        assert got["text"] == text


def test_edits_changed_but_still_working_are_not_protected() -> None:
    changed = _receipt({"clean": 1.0, "jpeg90": 0.85}, blocked=(0.9, 0.05))  # DSR high, the judge disagrees
    got = verdict(changed)
    assert got["level"] == "partly" and got["text"].startswith(
        "Partly protected: these editors' edits of this photo come out changed (100 % of them broken as delivered, "
        "85 % after JPEG quality 90), but some of them still do what they were asked.")
    assert verdict(_receipt({"clean": 1.0, "jpeg90": 0.85}, blocked=(0.9, 0.8)))["level"] == "protected"


def test_verdict_says_whether_edits_still_work_and_what_a_whole_photo_is() -> None:
    got = verdict(_receipt({"clean": 0.0, "noise": 0.0}, blocked=(0.5, 0.25)))
    assert got["text"].endswith(" Of the edits that work on the original, 50 % fail or come out visibly ruined as "
                                "delivered, 25 % in the worst case.")
    whole = verdict(_receipt({"clean": 0.9, "noise": 0.85}, scope="whole_photo"))
    assert whole["level"] == "protected" and whole["text"].startswith("No face was found, so this is about the "
                                                                      "whole picture, not a face. Protected")
