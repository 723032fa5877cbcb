"""MTCNN face detection (Zhang, Zhang, Li, Qiao, "Joint Face Detection and Alignment using Multi-task
Cascaded Convolutional Networks", 2016): a second detector, independent of core.faces' Haar cascades.

- Weights: the pretrained P-Net, R-Net and O-Net of the ``facenet-pytorch`` wheel
  (``facenet_pytorch/data/{pnet,rnet,onet}.pt``, MIT licence), found with ``importlib.util.find_spec``
  and loaded with ``weights_only=True``. facenet-pytorch's own modules are never imported (they import
  torchvision and pin an old torch): the three networks are defined here with the same layer names, and
  the cascade uses a pure-torch NMS and ``F.interpolate(mode="area")`` resampling.
- Cascade: an image pyramid (factor 0.709, faces from :data:`MIN_FACE` pixels) scanned by P-Net, NMS per
  scale (0.5) and over all scales (0.7); R-Net re-scores 24 px crops (0.7, NMS 0.7); O-Net re-scores 48 px
  crops and gives 5 landmarks (NMS 0.7 over the smaller box). Crops reaching outside the photo are padded
  with black, as in the original. Photos are downscaled to :data:`DETECT_SIDE` (long side) for detection.
- Framing: :meth:`MtcnnFace.frame` is the CelebA-style square (like :meth:`core.faces.Face.frame`):
  :data:`CROP_SCALE` box widths wide, levelled by the eyes and centred :data:`CROP_SHIFT` box widths from the
  eyes' midpoint, both measured on CelebA's aligned faces (:func:`celeba_framing`, ``benchmarks/detectors.py``).
  Anchored on the eyes, not the box centre: MTCNN's box follows the head's yaw (its horizontal offset from
  CelebA's square correlates 0.95 with the nose's offset from the eyes), CelebA's alignment does not.

Coordinates are continuous photo pixels (pixel ``i`` covers ``[i, i + 1)``); a box is ``(x, y, w, h)``.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.faces import Face, Frame, Point

# Measured with this detector on the first 400 CelebA aligned faces of the validation split (medians of
# :func:`celeba_framing`; benchmarks/detectors.py): the 178 px square is CROP_SCALE box widths wide, its
# centre CROP_SHIFT box widths from the eyes' midpoint (right, down; in the frame levelled by the eyes).
# Faces found in 400 of 400; 10th-90th percentiles: side 1.92-2.25, shift x -0.015-0.011, y -0.045--0.017
# (from the box centre instead, x would spread over -0.09-0.14).
CROP_SCALE = 2.08
CROP_SHIFT = (0.0, -0.03)
DETECT_SIDE = 1024  # photos are downscaled to this long side (at most) for detection
MIN_FACE = 20  # smallest face (pixels, at the detection scale)
THRESHOLDS = (0.6, 0.7, 0.7)  # P-Net, R-Net, O-Net face probabilities
PYRAMID_FACTOR = 0.709
LANDMARKS = ("eye_left", "eye_right", "nose", "mouth_left", "mouth_right")  # left = on the left of the picture
WEIGHTS = ("pnet", "rnet", "onet")


class PNet(nn.Module):
    """12x12 proposal network, fully convolutional (stride 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)
        self.conv4_2 = nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), self.conv4_1(x).softmax(dim=1)  # box regression, face probability


class RNet(nn.Module):
    """24x24 refinement network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).flatten(1)  # the weights' (Caffe) flattening order
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), self.dense5_1(x).softmax(dim=1)


class ONet(nn.Module):
    """48x48 output network: box regression, 5 landmarks (x then y, relative to the box), probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).flatten(1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), self.dense6_1(x).softmax(dim=1)


def weights_dir() -> Path | None:
    """The folder of the facenet-pytorch wheel holding pnet.pt, rnet.pt and onet.pt; None when the wheel is
    not installed. Located without importing the package (its ``__init__`` imports torchvision)."""
    spec = importlib.util.find_spec("facenet_pytorch")
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        folder = Path(location) / "data"
        if all((folder / f"{name}.pt").is_file() for name in WEIGHTS):
            return folder
    return None


@cache
def load_nets() -> tuple[PNet, RNet, ONet]:
    """The three pretrained networks (eval mode, strict state dicts), loaded once."""
    folder = weights_dir()
    if folder is None:
        raise RuntimeError("MTCNN needs the facenet-pytorch wheel's weights: pip install --no-deps facenet-pytorch")
    nets = (PNet(), RNet(), ONet())
    for name, net in zip(WEIGHTS, nets, strict=True):
        net.load_state_dict(torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True), strict=True)
        net.eval().requires_grad_(False)
    return nets


@dataclass(frozen=True)
class MtcnnFace(Face):
    """A face found by MTCNN: ``box`` (x, y, w, h), ``score`` the O-Net face probability, ``landmarks`` the
    5 points of :data:`LANDMARKS`. A :class:`core.faces.Face` whose :meth:`frame` uses MTCNN's calibration
    (class attributes, so that another eye-anchored detector can bring its own)."""

    crop_scale: ClassVar[float] = CROP_SCALE
    crop_shift: ClassVar[tuple[float, float]] = CROP_SHIFT

    @property
    def eyes_centre(self) -> Point:
        (lx, ly), (rx, ry) = (self.landmarks or {})["eye_left"], (self.landmarks or {})["eye_right"]
        return (lx + rx) / 2, (ly + ry) / 2

    def frame(self) -> Frame:
        """The square the forgers should see of this face (CelebA framing, MTCNN's calibration)."""
        w = self.box[2]
        cx, cy = self.eyes_centre
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dx, dy = self.crop_shift[0] * w, self.crop_shift[1] * w
        return Frame(cx + cos * dx - sin * dy, cy + sin * dx + cos * dy, self.crop_scale * w, self.angle)


def nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float, mode: str = "union") -> torch.Tensor:
    """Indices of the boxes (N, 4) x0, y0, x1, y1 kept by greedy non-maximum suppression, surest first: a box
    is dropped when its overlap with a kept one (IoU, or intersection over the smaller area with
    ``mode="min"``) exceeds ``threshold``."""
    x0, y0, x1, y1 = boxes.unbind(1)
    areas = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = (torch.minimum(x1[i], x1[rest]) - torch.maximum(x0[i], x0[rest])).clamp(min=0)
        ih = (torch.minimum(y1[i], y1[rest]) - torch.maximum(y0[i], y0[rest])).clamp(min=0)
        inter = iw * ih
        denom = torch.minimum(areas[i], areas[rest]) if mode == "min" else areas[i] + areas[rest] - inter
        order = rest[inter <= threshold * denom]
    return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


def _regress(boxes: torch.Tensor, reg: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4+) moved by the networks' regression (N, 4), in fractions of their width and height."""
    size = (boxes[:, 2:4] - boxes[:, 0:2]).repeat(1, 2)
    return torch.cat([boxes[:, :4] + reg * size, boxes[:, 4:]], dim=1)


def _square(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4+) made square (the longer side) about their centre."""
    centre = (boxes[:, 0:2] + boxes[:, 2:4]) / 2
    half = (boxes[:, 2:4] - boxes[:, 0:2]).amax(dim=1, keepdim=True) / 2
    return torch.cat([centre - half, centre + half, boxes[:, 4:]], dim=1)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 127.5) * 0.0078125


def _crops(img: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, size, size) network inputs: each box's pixels (black outside the photo), area-resampled."""
    h, w = img.shape[-2:]
    out = []
    for bx0, by0, bx1, by1 in boxes[:, :4].round().int().tolist():
        bx1, by1 = max(bx1, bx0 + 1), max(by1, by0 + 1)
        patch = img.new_zeros(1, 3, by1 - by0, bx1 - bx0)
        x0, y0, x1, y1 = max(bx0, 0), max(by0, 0), min(bx1, w), min(by1, h)
        if x1 > x0 and y1 > y0:
            patch[..., y0 - by0 : y1 - by0, x0 - bx0 : x1 - bx0] = img[..., y0:y1, x0:x1]
        out.append(F.interpolate(patch, size=(size, size), mode="area"))
    return _normalise(torch.cat(out))


def _proposals(img: torch.Tensor, pnet: PNet, min_face: float, threshold: float, factor: float) -> torch.Tensor:
    """Stage 1: (N, 5) square candidate boxes x0, y0, x1, y1, probability from P-Net over the pyramid."""
    h, w = img.shape[-2:]
    scale = 12.0 / min_face
    found = []
    while min(h, w) * scale >= 12:
        sh, sw = int(h * scale + 1), int(w * scale + 1)
        reg, prob = pnet(_normalise(F.interpolate(img, size=(sh, sw), mode="area")))
        ys, xs = torch.nonzero(prob[0, 1] >= threshold, as_tuple=True)
        if ys.numel() > 0:
            kx, ky = sw / w, sh / h  # the 12 px window of output cell (i, j) is [2j, 2j + 12) at this scale
            boxes = torch.stack([2 * xs / kx, 2 * ys / ky, (2 * xs + 12) / kx, (2 * ys + 12) / ky], dim=1).float()
            cand = torch.cat([boxes, prob[0, 1, ys, xs, None], reg[0, :, ys, xs].T], dim=1)
            found.append(cand[nms(boxes, cand[:, 4], 0.5)])
        scale *= factor
    if not found:
        return img.new_zeros(0, 5)
    cand = torch.cat(found)
    cand = cand[nms(cand[:, :4], cand[:, 4], 0.7)]
    return _square(_regress(cand[:, :5], cand[:, 5:9]))


def _rgb255(image: Any) -> torch.Tensor:
    """(1, 3, H, W) float in [0, 255] from a LoadedImage, a (1, 3, H, W) tensor in [-1, 1] or (H, W, 3) uint8."""
    tensor = getattr(image, "tensor", image)
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach().float().cpu()
        t = t[None] if t.dim() == 3 else t
        if t.dim() != 4 or t.shape[:2] != (1, 3):
            raise ValueError(f"expected a (1, 3, H, W) image, got {tuple(t.shape)}")
        return (t.clamp(-1, 1) + 1) * 127.5
    arr = np.asarray(tensor)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32).transpose(2, 0, 1).copy())[None]


@torch.no_grad()
def detect_faces(
    image: Any,
    max_faces: int | None = None,
    min_face: float = MIN_FACE,
    thresholds: tuple[float, float, float] = THRESHOLDS,
    detect_side: int = DETECT_SIDE,
) -> list[MtcnnFace]:
    """Faces in a photo, most probable first, with 5 landmarks each.

    ``image``: a :class:`core.image.LoadedImage`, a (1, 3, H, W) tensor in [-1, 1] or an (H, W, 3) uint8
    array, upright. Photos larger than ``detect_side`` are downscaled for detection (``min_face`` is in
    pixels at that scale); boxes and landmarks are returned in the photo's pixels.
    """
    pnet, rnet, onet = load_nets()
    img = _rgb255(image)
    h, w = img.shape[-2:]
    if max(h, w) > detect_side:
        k = detect_side / max(h, w)
        img = F.interpolate(img, size=(max(1, round(h * k)), max(1, round(w * k))), mode="area")
    kx, ky = w / img.shape[-1], h / img.shape[-2]  # detection pixels -> photo pixels
    boxes = _proposals(img, pnet, min_face, thresholds[0], PYRAMID_FACTOR)
    if boxes.shape[0] > 0:  # stage 2: R-Net
        reg, prob = rnet(_crops(img, boxes, 24))
        ok = prob[:, 1] > thresholds[1]
        boxes = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1)
        keep = nms(boxes[:, :4], boxes[:, 4], 0.7)
        boxes = _square(_regress(boxes[keep], reg[ok][keep]))
    if boxes.shape[0] == 0:
        return []
    reg, points, prob = onet(_crops(img, boxes, 48))  # stage 3: O-Net
    ok = prob[:, 1] > thresholds[2]
    boxes, reg, points = torch.cat([boxes[ok, :4], prob[ok, 1:2]], dim=1), reg[ok], points[ok]
    size = boxes[:, 2:4] - boxes[:, 0:2]
    xs = boxes[:, 0:1] + size[:, 0:1] * points[:, :5]
    ys = boxes[:, 1:2] + size[:, 1:2] * points[:, 5:]
    boxes = _regress(boxes, reg)
    keep = nms(boxes[:, :4], boxes[:, 4], 0.7, mode="min")
    faces = []
    for (x0, y0, x1, y1, p), lx, ly in zip(boxes[keep].tolist(), xs[keep].tolist(), ys[keep].tolist(), strict=True):
        marks = {name: (px * kx, py * ky) for name, px, py in zip(LANDMARKS, lx, ly, strict=True)}
        faces.append(MtcnnFace((x0 * kx, y0 * ky, (x1 - x0) * kx, (y1 - y0) * ky), p, marks))
    return faces[:max_faces] if max_faces is not None else faces


def celeba_framing(aligned: Any) -> tuple[float, float, float] | None:
    """How CelebA's training crop (CenterCrop 178 of an aligned 178x218 image) frames the face MTCNN finds:
    (crop side, crop centre x - eyes' midpoint x, crop centre y - eyes' midpoint y) in box widths, the offset
    in the frame levelled by the eyes; None when no face is found. Medians: :data:`CROP_SCALE`, :data:`CROP_SHIFT`."""
    found = detect_faces(aligned, max_faces=1)
    if not found:
        return None
    h, w = _rgb255(aligned).shape[-2:]
    return celeba_offsets(found[0], w, h)


def celeba_offsets(face: MtcnnFace, w: int, h: int) -> tuple[float, float, float]:
    """:func:`celeba_framing` of one eye-anchored face in a ``w`` x ``h`` aligned CelebA image."""
    crop = min(178, w, h)
    left, top = round((w - crop) / 2), round((h - crop) / 2)
    (bx, by), bw = face.eyes_centre, face.box[2]
    dx, dy = left + crop / 2 - bx, top + crop / 2 - by
    cos, sin = math.cos(face.angle), math.sin(face.angle)
    return crop / bw, (cos * dx + sin * dy) / bw, (-sin * dx + cos * dy) / bw
