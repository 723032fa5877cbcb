"""Faces in real photos: detection, CelebA framing, paste back at full resolution, and the face pipeline.

The photos are scikit-image's public-domain astronaut portrait (a real face, which a real detector needs)
pasted into larger canvases, some stored rotated with an EXIF orientation tag; the forger is the tiny
random network, so the protection itself is fast.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from photos import (  # tests/photos.py (tests/ is on sys.path)
    astronaut,
    canvas,
    check_phone_result,
    expected_face,
    jpeg_with_orientation,
    phone_photo,
)
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from core import faces as fc
from core.cli import app
from core.data import preprocess_face, read_index
from core.forgers import create_forger
from core.image import LoadedImage, from_uint8, load_image, quantize
from core.methods import Protection, create_method
from core.protect import protect_images


def near(face: fc.Face, cx: float, cy: float, width: float) -> bool:
    fx, fy = face.center
    return math.hypot(fx - cx, fy - cy) < 0.15 * width and abs(face.box[2] / width - 1) < 0.25


@pytest.fixture(scope="module")
def protection() -> Protection:
    torch.manual_seed(0)
    return create_method("pgd", create_forger("stargan", config="tiny", pretrained=False), eps=0.05, steps=2)


def check_delivered(protection: Protection, x: torch.Tensor, x_adv: torch.Tensor, faces: list[fc.Face]) -> None:
    """Same size, 8-bit, untouched outside the faces' squares, perturbed inside within the cap."""
    assert x_adv.shape == x.shape
    levels = (x_adv + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    changed = (x_adv != x).any(dim=1)[0]
    support = fc.face_support(x, faces)
    assert not changed[~support].any(), "a pixel outside the face regions changed"
    delta = (x_adv - x).abs()
    assert delta.max() <= protection.linf_cap() + 1e-6
    for face in faces:
        cx, cy = (round(v) for v in face.center)
        assert changed[cy - 10 : cy + 10, cx - 10 : cx + 10].float().mean() > 0.3, "the face was not perturbed"


# ----- detection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "left", "top", "scale", "orientation"),
    [
        (512, 512, 0, 0, 1.0, 1),
        (900, 700, 300, 120, 1.0, 6),
        (1300, 1000, 100, 200, 1.5, 3),
        (640, 1400, 70, 800, 1.0, 8),
        (2400, 1800, 900, 500, 2.0, 5),
    ],
)
def test_face_found_in_canvases_with_exif_orientation(
    width: int, height: int, left: int, top: int, scale: float, orientation: int
) -> None:
    upright = canvas(width, height, [(astronaut(scale), left, top)])
    image = load_image(jpeg_with_orientation(upright, orientation))
    assert image.size == (width, height)  # EXIF orientation applied
    found = fc.detect_faces(image)
    assert len(found) == 1, [f.to_dict() for f in found]
    assert near(found[0], *expected_face(left, top, scale))
    assert found[0].landmarks is not None and abs(math.degrees(found[0].angle)) < 10


def test_two_faces_side_by_side() -> None:
    photo = canvas(1200, 620, [(astronaut(), 40, 60), (astronaut(), 640, 40)])
    found = fc.detect_faces(from_uint8(photo))
    assert len(found) == 2
    for left, top in ((40, 60), (640, 40)):
        assert any(near(f, *expected_face(left, top, 1.0)) for f in found)
    assert len(fc.detect_faces(from_uint8(photo), max_faces=1)) == 1


def test_no_face_in_a_smooth_gradient() -> None:
    assert fc.detect_faces(from_uint8(canvas(800, 600, []))) == []
    assert fc.detect_faces(torch.zeros(1, 3, 10, 10)) == []


# ----- geometry ----------------------------------------------------------------------------------------


def test_align_crop_frames_and_levels_the_face() -> None:
    x = from_uint8(data.astronaut())
    [face] = fc.detect_faces(x)
    frame = face.frame()
    assert frame.side == pytest.approx(fc.CROP_SCALE * face.box[2])
    crop = fc.align_crop(x, face, 64)
    assert crop.shape == (1, 3, 64, 64)
    # tilted photo: the detected eye line gives the rotation, and the crop comes out (nearly) the same
    tilted = np.asarray(Image.fromarray(data.astronaut()).rotate(-12, Image.Resampling.BICUBIC, center=(224, 115)))
    [face_t] = fc.detect_faces(from_uint8(tilted))
    assert math.degrees(face_t.angle) == pytest.approx(math.degrees(face.angle) + 12, abs=5)
    crop_t = fc.align_crop(from_uint8(tilted), face_t, 64)
    unrotated = fc.align_crop(from_uint8(tilted), fc.Face(face_t.box, face_t.score), 64)
    assert (crop_t - crop).pow(2).mean() < (unrotated - crop).pow(2).mean()


def test_paste_back_touches_only_the_faces_and_holds_the_cap() -> None:
    g = torch.Generator().manual_seed(0)
    # a photo off the 8-bit grid (as a 16-bit PNG decodes): outside pixels must come back bit for bit
    x = torch.rand(1, 3, 300, 400, generator=g) * 1.8 - 0.9
    frames = [fc.Frame(120.3, 140.7, 150.0, 0.2), fc.Frame(200.0, 150.0, 120.0, -0.1), fc.Frame(390, 20, 80)]
    crops = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    eps = 4 / 127.5
    advs = (crops + (torch.rand(3, 3, 32, 32, generator=g) * 2 - 1) * eps).clamp(-1, 1)
    protection = create_method("pgd", create_forger("stargan", config="tiny", pretrained=False), eps=eps)
    out = fc.paste_back(x, advs, frames, crops, finalize=protection.finalize)
    support = fc.face_support(x, frames)
    changed = (out != x).any(dim=1)[0]
    assert torch.equal(out[..., ~support], x[..., ~support])
    assert changed[support].float().mean() > 0.5
    assert (out - x).abs().max() <= eps + 1e-6  # overlaps are averaged, never summed
    levels = (out[..., changed] + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)
    same = fc.paste_back(x, crops, frames, crops)  # no perturbation: at most the 8-bit rounding, inside only
    assert torch.equal(same[..., ~support], x[..., ~support])
    assert ((same == x) | (same == quantize(x))).all()


def test_round_trip_is_what_an_attacker_crops() -> None:
    """The transform the protection optimises through equals paste back + crop again (same framing)."""
    x = from_uint8(canvas(800, 700, [(astronaut(1.3), 100, 20)]))
    [face] = fc.detect_faces(x)
    crop = quantize(fc.align_crop(x, face, 64))
    g = torch.Generator().manual_seed(1)
    adv = quantize(crop + (torch.rand(crop.shape, generator=g) * 2 - 1) * 0.05)
    trip = fc.RoundTrip(crop, [(face.frame(), x)], framing=None)
    seen, ref = trip.pair(adv, crop)
    pasted = fc.paste_back(x, adv, [face], crop)
    again = fc.align_crop(pasted, face, 64)
    levels = (seen - again).abs().flatten() * 127.5  # the photo's 8-bit rounding, and clipping at white/black
    assert levels.mean() < 0.1 and levels.quantile(0.99) < 0.5
    assert torch.allclose(ref, fc.align_crop(x, face, 64), atol=1e-5)
    assert (seen - ref).abs().mean() > 0.2 * (adv - crop).abs().mean()


def test_round_trip_moves_the_face_with_its_perturbation() -> None:
    """An attacker framing the face otherwise crops the face otherwise too: both members of a pair move."""
    x = from_uint8(canvas(800, 700, [(astronaut(1.3), 100, 20)]))
    [face] = fc.detect_faces(x)
    crop = quantize(fc.align_crop(x, face, 64))
    trip = fc.RoundTrip(crop, [(face.frame(), x)], framing=fc.Framing(scale_span=0.25))
    seen, ref = trip.pair(crop, crop, torch.Generator().manual_seed(3))
    assert (ref - crop).abs().mean() > 0.02  # another framing of the face ...
    assert (seen - ref).abs().max() < 1e-5  # ... and with no perturbation, the same crop of both


def test_round_trip_pairs_share_the_platform_draw() -> None:
    """The protection's own random transform draws once for both members of a pair (and deterministically)."""
    from core.transforms.eot import EoT

    x = from_uint8(canvas(800, 700, [(astronaut(1.3), 100, 20)]))
    [face] = fc.detect_faces(x)
    crop = quantize(fc.align_crop(x, face, 64))
    trip = fc.RoundTrip(crop, [(face.frame(), x)], then=EoT.from_names(["blur", "resize", "avgblur"]))
    adv = quantize(crop + 0.05)
    draws = []
    for seed in range(4):
        seen, ref = trip.pair(crop, crop, torch.Generator().manual_seed(seed))
        assert (seen - ref).abs().max() < 1e-5  # no perturbation: the same draw leaves no difference
        once = trip.pair(adv, crop, torch.Generator().manual_seed(seed))
        again = trip.pair(adv, crop, torch.Generator().manual_seed(seed))
        assert torch.equal(once[0], again[0]) and torch.equal(once[1], again[1])
        draws.append(ref)
    assert any((draws[0] - d).abs().max() > 0.01 for d in draws[1:])  # and the draws do differ


def test_round_trip_of_a_large_face_is_what_an_attacker_crops() -> None:
    """A face far larger than the crop is simulated on a downscaled canvas: still the paste back + crop again."""
    x = from_uint8(canvas(1700, 1500, [(astronaut(2.8), 150, 60)]))
    [face] = fc.detect_faces(x)
    assert face.frame().side > fc.TRIP_SCALE * 64  # the canvas is scaled down
    crop = quantize(fc.align_crop(x, face, 64))
    adv = quantize(crop + (torch.rand(crop.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.05)
    seen, ref = fc.RoundTrip(crop, [(face.frame(), x)], framing=None).pair(adv, crop)
    again = fc.align_crop(fc.paste_back(x, adv, [face], crop), face, 64)
    clean = fc.align_crop(x, face, 64)
    assert (ref - clean).abs().mean() < 0.01
    assert (seen - again).abs().mean() < 0.25 * (again - clean).abs().mean()


def test_round_trip_delivers_the_budgeted_share() -> None:
    """A budget map scales what the round trip delivers: none of the perturbation at 0, all of it at 1."""
    x = from_uint8(canvas(800, 700, [(astronaut(1.3), 100, 20)]))
    [face] = fc.detect_faces(x)
    crop = quantize(fc.align_crop(x, face, 64))
    adv = quantize(crop + (torch.rand(crop.shape, generator=torch.Generator().manual_seed(2)) * 2 - 1) * 0.05)
    frames = [(face.frame(), x)]
    full = fc.RoundTrip(crop, frames, framing=None).pair(adv, crop)[0]
    ones = fc.RoundTrip(crop, frames, framing=None, budget=torch.ones_like(crop[:, :1])).pair(adv, crop)[0]
    none, ref = fc.RoundTrip(crop, frames, framing=None, budget=torch.zeros_like(crop[:, :1])).pair(adv, crop)
    assert torch.equal(full, ones)
    assert torch.allclose(none, ref, atol=1e-6) and (full - ref).abs().mean() > 0.005


# ----- the pipeline ------------------------------------------------------------------------------------


def test_texture_masking_spares_flat_skin(protection: Protection) -> None:
    """With ``flat_budget`` each crop's perturbation shrinks where the crop is flat, and only there."""
    from core.channel import texture_mask
    from core.protect import detect, perturb

    [d] = detect(protection, [LoadedImage(from_uint8(canvas(800, 700, [(astronaut(), 200, 80)])), None, "PNG")])
    [uniform] = perturb(protection, [d], refine=0, framing=None)
    [shaped] = perturb(protection, [d], refine=0, framing=None, flat_budget=0.25)
    assert d.crops is not None and uniform.advs is not None and shaped.advs is not None
    mask = texture_mask(d.crops, 0.25)[:, 0]
    flat, busy = mask <= 0.3, mask >= 1.0
    assert flat.sum() > 50 and busy.sum() > 50

    def level(advs: torch.Tensor, where: torch.Tensor) -> float:
        return float((advs - d.crops).abs().amax(dim=1)[where].mean())

    assert level(shaped.advs, flat) < 0.5 * level(uniform.advs, flat)
    assert level(shaped.advs, busy) > 0.7 * level(uniform.advs, busy)
    support = fc.face_support(d.x, list(d.faces))  # and the photo outside the faces is untouched either way
    assert torch.equal(shaped.x_adv[..., ~support], d.x[..., ~support])


def test_flat_budget_beside_a_channel_is_refused(protection: Protection) -> None:
    from core.channel import ChannelSpec

    image = LoadedImage(from_uint8(canvas(800, 700, [(astronaut(), 200, 80)])), None, "PNG")
    with pytest.raises(ValueError, match="flat_budget"):
        protect_images(protection, [image], channel=ChannelSpec(), flat_budget=0.5)


def test_protect_a_face_at_full_resolution(protection: Protection) -> None:
    upright = canvas(900, 700, [(astronaut(), 300, 120)])
    image = load_image(jpeg_with_orientation(upright, 6))
    [result] = protect_images(protection, [image])
    rep = result.report
    assert rep["protection"] == "faces" and rep["faces_found"] == 1
    assert (rep["width"], rep["height"]) == (900, 700)
    [face] = rep["faces"]
    found = fc.Face(tuple(face["box"]), face["score"], {k: tuple(v) for k, v in face["landmarks"].items()})
    assert near(found, *expected_face(300, 120, 1.0))
    check_delivered(protection, image.tensor, result.x_adv, result.faces or [])
    assert set(face) >= {"box", "score", "landmarks", "angle", "region", "psnr", "ssim", "lpips", "within_budget",
                         "success_rate", "forgers", "redetected"}
    x0, y0, x1, y1 = face["region"]
    outside = torch.ones(700, 900, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(result.x_adv[..., outside], image.tensor[..., outside])
    assert face["psnr"] == pytest.approx(rep["psnr"]) and face["psnr"] > 35
    assert face["within_budget"] is True and rep["within_budget"] is True
    assert face["redetected"] is True
    # one face, one forger: the face's rate is the forger's, the photo's is the face's, a share of 5 edits
    rate = face["forgers"]["stargan"]["success_rate"]
    assert face["success_rate"] == rate == rep["forgers"]["stargan"]["success_rate"]
    assert rate * 5 == pytest.approx(round(rate * 5))
    assert rep["linf"] <= protection.linf_cap() + 1e-6
    # the same change in a user's units: whole 8-bit levels, and only pixels inside the face's region touched
    assert rep["max_change_levels"] == round(rep["linf"] * 127.5) and 1 <= rep["max_change_levels"] <= 7
    touched = int((result.x_adv != image.tensor).any(dim=1).sum())
    assert rep["changed_share"] == pytest.approx(touched / (700 * 900))
    assert 0 < rep["changed_share"] <= (x1 - x0) * (y1 - y0) / (700 * 900)
    json.dumps(rep)


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_two_faces_in_one_photo_and_a_batch(protection: Protection) -> None:
    two = LoadedImage(from_uint8(canvas(1200, 620, [(astronaut(), 40, 60), (astronaut(), 640, 40)])), None, "PNG")
    one = LoadedImage(from_uint8(canvas(700, 560, [(astronaut(), 150, 30)])), None, "PNG")
    [r2, r1] = protect_images(protection, [two, one])
    assert len(r2.report["faces"]) == 2 and r2.report["faces_found"] == 2 and "faces_skipped" not in r2.report
    check_delivered(protection, two.tensor, r2.x_adv, r2.faces or [])
    assert r1.report["faces_found"] == 1
    check_delivered(protection, one.tensor, r1.x_adv, r1.faces or [])
    [first] = protect_images(protection, [two], max_faces=1)
    assert len(first.report["faces"]) == 1
    assert first.report["faces_found"] == 2 and first.report["faces_skipped"] == 1


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_no_face_is_reported_and_left_alone_unless_asked(protection: Protection) -> None:
    plain = LoadedImage(from_uint8(canvas(300, 200, [])), None, "PNG")
    face = LoadedImage(from_uint8(data.astronaut()), None, "PNG")
    [none, ok] = protect_images(protection, [plain, face])
    assert none.report["protection"] == "no_face" and none.report["faces_found"] == 0
    assert none.report["faces"] == [] and none.report["forgers"] == {} and none.report["psnr"] is None
    assert torch.equal(none.x_adv, plain.tensor)
    assert ok.report["protection"] == "faces"
    [whole] = protect_images(protection, [plain], whole_image=True)
    assert whole.report["protection"] == "whole_image" and whole.report["within_budget"] is True
    assert whole.x_adv.shape == plain.tensor.shape and not torch.equal(whole.x_adv, plain.tensor)
    rate = whole.report["forgers"]["stargan"]["success_rate"]  # a share of the 5 edits of the whole photo
    assert rate * 5 == pytest.approx(round(rate * 5)) and whole.report["receipt"]["scope"] == "whole_photo"
    # the verdict in words says it is the whole picture, not a face, whatever its level
    assert whole.report["receipt"]["verdict"]["text"].startswith("No face was found")


def test_unknown_target_fails_even_without_faces(protection: Protection) -> None:
    plain = LoadedImage(from_uint8(canvas(64, 64, [])), None, "PNG")
    with pytest.raises(ValueError, match="unknown target"):
        protect_images(protection, [plain], only=["Bald"])


# ----- CelebA (skipped without the dataset) -------------------------------------------------------------


@pytest.mark.dataset
def test_calibration_holds_on_celeba(celeba_root: Path) -> None:
    names = read_index(celeba_root, "val").files[:24]
    measured = []
    for name in names:
        with Image.open(celeba_root / "img_align_celeba" / name) as img:
            framing = fc.celeba_framing(np.asarray(img.convert("RGB")))
        if framing is not None:
            measured.append(framing)
    assert len(measured) >= 0.8 * len(names)
    scale, dx, dy = np.median(np.array(measured), axis=0)
    assert scale == pytest.approx(fc.CROP_SCALE, rel=0.08)
    assert dx == pytest.approx(fc.CROP_SHIFT[0], abs=0.05) and dy == pytest.approx(fc.CROP_SHIFT[1], abs=0.05)


@pytest.mark.dataset
def test_celeba_faces_in_a_canvas(celeba_root: Path, protection: Protection) -> None:
    names = read_index(celeba_root, "val").files[:6]
    pics, refs = [], []
    for name in names:
        with Image.open(celeba_root / "img_align_celeba" / name) as img:
            rgb = img.convert("RGB")
            pics.append(np.asarray(rgb.resize((356, 436), Image.Resampling.BICUBIC)))  # 2x, like a larger photo
            refs.append(torch.from_numpy(preprocess_face(rgb, 64)).float()[None] / 127.5 - 1)
    places = [(pics[i], 60 + 420 * i, 80 + 40 * i) for i in range(3)]
    photo = LoadedImage(from_uint8(canvas(1360, 700, places)), None, "PNG")
    found = fc.detect_faces(photo)
    matched = 0
    for i in range(3):
        for face in found:
            fx, fy = face.center
            if 60 + 420 * i < fx < 60 + 420 * i + 356 and 80 + 40 * i < fy < 80 + 40 * i + 436:
                matched += 1
                # our crop of the pasted face looks like CelebA's own training crop of it
                crop = fc.align_crop(photo.tensor, face, 64)
                assert (crop - refs[i]).pow(2).mean() < 0.15
    assert matched >= 2
    [result] = protect_images(protection, [photo])
    assert len(result.report["faces"]) == len(found)
    check_delivered(protection, photo.tensor, result.x_adv, result.faces or [])


# ----- command line --------------------------------------------------------------------------------------


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_cli_protects_faces_and_skips_faceless_photos(tiny_checkpoints: Path, tmp_path: Path) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    (photos / "portrait.jpg").write_bytes(jpeg_with_orientation(canvas(700, 600, [(astronaut(), 100, 50)]), 6))
    Image.fromarray(canvas(200, 150, [])).save(photos / "wall.png")
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, ["protect", str(photos), "-o", str(out), "--steps", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = {Path(p["input"]).name: p for p in json.loads((out / "report.json").read_text())["photos"]}
    assert report["portrait.jpg"]["protection"] == "faces" and len(report["portrait.jpg"]["faces"]) == 1
    assert Image.open(report["portrait.jpg"]["output"]).size == (700, 600)
    assert report["wall.png"]["protection"] == "no_face" and report["wall.png"]["output"] is None
    assert sorted(p.name for p in out.glob("*.png")) == ["portrait.png"]
    result = runner.invoke(app, ["protect", str(photos / "wall.png"), "-o", str(out), "--steps", "1",
                                 "--whole-image", "--max-faces", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (out / "wall.png").is_file()


def test_demo_image_is_the_whole_portrait(tmp_path: Path) -> None:
    from core.workflows import demo_image

    src = demo_image(tmp_path)
    assert Image.open(src).size == (512, 512)
    assert len(fc.detect_faces(load_image(src))) == 1


@pytest.fixture(scope="session")
def phone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    data, upright = phone_photo()
    path = tmp_path_factory.mktemp("phone") / "IMG_0001.jpg"
    path.write_bytes(data)
    return path, upright


@pytest.mark.slow
def test_a_12_megapixel_phone_photo_through_the_cli(
    tiny_checkpoints: Path, tmp_path: Path, phone: tuple[Path, np.ndarray]
) -> None:
    """Two faces, stored rotated (EXIF 6) with GPS: out at full size, upright, both faces protected, the rest
    untouched, no EXIF, with the receipt in report.json."""
    src, upright = phone
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["protect", str(src), "-o", str(out), "--steps", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    [report] = json.loads((out / "report.json").read_text())["photos"]
    check_phone_result(upright, Path(report["output"]).read_bytes(), report)


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_refine_protects_the_framing_an_attacker_finds(protection: Protection) -> None:
    """A refinement round may only help: the delivered photo is the better of the two protections, as seen
    through a fresh detection of its faces; it stays within the budget and outside the faces untouched."""
    image = load_image(jpeg_with_orientation(canvas(900, 700, [(astronaut(), 300, 120)]), 1))
    [plain] = protect_images(protection, [image], refine=0, receipt_conditions=("clean",))
    [refined] = protect_images(protection, [image], refine=1, receipt_conditions=("clean",))
    rate = refined.report["forgers"]["stargan"]["success_rate"]
    assert rate >= plain.report["forgers"]["stargan"]["success_rate"]
    assert refined.report["receipt"]["conditions"]["clean"]["success_rate"] == pytest.approx(rate)
    assert refined.report["within_budget"] is True
    changed = (refined.x_adv != image.tensor).any(dim=1)[0]
    inside = torch.zeros_like(changed)
    for face in refined.report["faces"]:
        x0, y0, x1, y1 = face["region"]
        inside[y0:y1, x0:x1] = True
    assert changed.any() and not changed[~inside].any()
    assert (refined.x_adv - image.tensor).abs().max() <= protection.linf_cap() + 1e-6


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_cli_keeps_metadata_only_when_asked_and_measures_a_jpeg_as_delivered(
    tiny_checkpoints: Path, tmp_path: Path
) -> None:
    upright = canvas(700, 600, [(astronaut(), 100, 50)])
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    src = tmp_path / "in" / "portrait.jpg"
    src.parent.mkdir()
    stored.save(src, "JPEG", quality=95, exif=exif)
    runner = CliRunner()
    args = ["protect", str(src), "--steps", "1", "--refine", "0"]
    kept = runner.invoke(app, [*args, "-o", str(tmp_path / "kept"), "--keep-metadata", "--format", "jpeg"],
                         catch_exceptions=False)
    assert kept.exit_code == 0, kept.output
    [report] = json.loads((tmp_path / "kept" / "report.json").read_text())["photos"]
    out = Image.open(report["output"])
    assert out.format == "JPEG" and out.size == (700, 600) and report["lossy_output"] is True
    tags = out.getexif()
    assert tags[0x010F] == "PhoneMaker" and tags.get_ifd(0x8825)[1] == "N" and 0x0112 not in tags
    # The report measured the JPEG as written, not the pixels before encoding.
    delivered = load_image(report["output"]).tensor
    assert report["linf"] == pytest.approx(float((delivered - load_image(src).tensor).abs().max()), abs=1e-5)
    plain = runner.invoke(app, [*args, "-o", str(tmp_path / "plain")], catch_exceptions=False)
    assert plain.exit_code == 0, plain.output
    assert len(Image.open(tmp_path / "plain" / "portrait.png").getexif()) == 0


def test_framing_draws_cover_the_scale_span() -> None:
    """An attacker's framing: the uniform log-scale span on top of Gaussian errors, reproducible by seed."""
    frame = fc.Frame(100.0, 120.0, 80.0, 0.1)
    assert fc.Framing(shift=0.0, log_scale=0.0, angle=0.0, scale_span=0.0).offset(frame) == frame
    spread = fc.Framing(shift=0.0, log_scale=0.0, angle=0.0, scale_span=0.25)
    g = torch.Generator().manual_seed(0)
    logs = torch.tensor([math.log(spread.offset(frame, g).side / 80.0) for _ in range(400)])
    assert float(logs.abs().max()) <= 0.25 + 1e-9 and float(logs.min()) < -0.2 and float(logs.max()) > 0.2
    assert abs(float(logs.mean())) < 0.03  # centred on our own framing
    shifted = fc.Framing(shift=0.01, log_scale=0.0, angle=2.0, scale_span=0.0, clip=2.5)
    draws = [shifted.offset(frame, torch.Generator().manual_seed(i)) for i in range(200)]
    assert max(abs(d.cx - 100.0) for d in draws) <= 2.5 * 0.01 * 80.0 + 1e-9
    assert max(abs(math.degrees(d.angle - 0.1)) for d in draws) <= 5.0 + 1e-6
    assert draws[3] == shifted.offset(frame, torch.Generator().manual_seed(3))
