"""MTCNN (core.detectors.mtcnn) with the pretrained weights of the facenet-pytorch wheel, on scikit-image's
public-domain astronaut portrait: no dataset needed. Skipped when the wheel is not installed."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from photos import astronaut, canvas  # tests/photos.py (tests/ is on sys.path)

from core import faces as fc
from core.detectors import mtcnn
from core.image import from_uint8

pytestmark = pytest.mark.skipif(
    mtcnn.weights_dir() is None, reason="MTCNN weights absent: pip install --no-deps facenet-pytorch (make setup)"
)


@pytest.fixture(scope="module")
def portrait() -> list[mtcnn.MtcnnFace]:
    return mtcnn.detect_faces(from_uint8(astronaut()))


def test_weights_load_strictly_without_importing_facenet_pytorch() -> None:
    folder = mtcnn.weights_dir()
    assert folder is not None
    for name, net in zip(mtcnn.WEIGHTS, mtcnn.load_nets(), strict=True):
        state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
        assert set(state) == set(net.state_dict())
        net.load_state_dict(state, strict=True)
        assert not net.training
    assert "facenet_pytorch" not in sys.modules and "torchvision" not in sys.modules


def test_nms_keeps_the_surest_of_overlapping_boxes() -> None:
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 8, 8.0]])
    scores = torch.tensor([0.8, 0.9, 0.5, 0.7])
    assert mtcnn.nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    assert mtcnn.nms(boxes, scores, 0.5, mode="min").tolist() == [1, 2]  # the nested box goes too
    assert mtcnn.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


def test_astronaut_one_face_where_haar_finds_it(portrait: list[mtcnn.MtcnnFace]) -> None:
    assert len(portrait) == 1
    face = portrait[0]
    assert face.score > 0.9
    haar = fc.detect_faces(astronaut())
    assert len(haar) == 1 and fc.box_iou(face.box, haar[0].box) > 0.5
    x, y, w, h = face.box
    assert set(face.landmarks or {}) == set(mtcnn.LANDMARKS)
    for px, py in (face.landmarks or {}).values():
        assert x < px < x + w and y < py < y + h
    marks = face.landmarks or {}
    assert marks["eye_left"][0] < marks["eye_right"][0]
    assert marks["mouth_left"][0] < marks["mouth_right"][0]
    assert max(marks["eye_left"][1], marks["eye_right"][1]) < marks["nose"][1] < marks["mouth_left"][1]
    # the same face from the uint8 array
    again = mtcnn.detect_faces(astronaut())
    assert len(again) == 1 and np.allclose(again[0].box, face.box, atol=0.5)


def test_uniform_images_have_no_face() -> None:
    assert mtcnn.detect_faces(np.full((240, 320, 3), 128, dtype=np.uint8)) == []
    assert mtcnn.detect_faces(torch.zeros(1, 3, 200, 300)) == []
    assert mtcnn.detect_faces(np.zeros((10, 10, 3), dtype=np.uint8)) == []  # smaller than the smallest face


def test_mirrored_photo_mirrored_face(portrait: list[mtcnn.MtcnnFace]) -> None:
    """MTCNN is not exactly mirror-symmetric (stride-2 P-Net grid, crops rounded to pixels): a few pixels."""
    (face,) = portrait
    flipped = mtcnn.detect_faces(np.ascontiguousarray(astronaut()[:, ::-1]))
    assert len(flipped) == 1
    x, y, w, h = face.box
    fx, fy, fw, fh = flipped[0].box
    tol = 0.1 * w  # measured: 6.5 px of an 86 px wide box at most
    assert abs((512 - fx - fw) - x) < tol and abs((512 - fx) - (x + w)) < tol
    assert abs(fy - y) < tol and abs(fh - h) < tol
    mirrored, marks = flipped[0].landmarks or {}, face.landmarks or {}
    for a, b in (("eye_left", "eye_right"), ("mouth_left", "mouth_right"), ("nose", "nose")):
        assert abs(512 - mirrored[a][0] - marks[b][0]) < 0.05 * w and abs(mirrored[a][1] - marks[b][1]) < 0.05 * w
        assert abs(512 - mirrored[b][0] - marks[a][0]) < 0.05 * w


@pytest.mark.slow
def test_large_photo_is_downscaled_and_mapped_back(portrait: list[mtcnn.MtcnnFace]) -> None:
    photo = canvas(1900, 1500, [(astronaut(2.0), 600, 300)])  # detected at 1024 px: the face at ~1x
    found = mtcnn.detect_faces(photo)
    assert len(found) == 1
    x, y, w, h = portrait[0].box
    expected = (600 + 2 * x, 300 + 2 * y, 2 * w, 2 * h)
    assert fc.box_iou(found[0].box, expected) > 0.8


def test_frame_is_a_calibrated_square_usable_by_align_crop(portrait: list[mtcnn.MtcnnFace]) -> None:
    (face,) = portrait
    frame = face.frame()
    assert frame.side == pytest.approx(mtcnn.CROP_SCALE * face.box[2])
    assert abs(frame.angle) < 0.2  # her eyes are nearly level
    crop = fc.align_crop(from_uint8(astronaut()), face, 64)
    assert crop.shape == (1, 3, 64, 64)
