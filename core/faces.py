"""Faces in real photos: detect them, crop them the way the forgers were trained to see faces, and map a
protection computed on a crop back onto the full-resolution photo.

- Detection: OpenCV's Haar cascades (``haarcascade_frontalface_alt2`` for faces, ``haarcascade_eye``
  for the eyes), shipped inside the ``opencv-python-headless`` wheel (``cv2.data.haarcascades``): no
  download at run time. Frontal and near-frontal faces, upright after EXIF orientation (tilts up to about
  20 degrees); profiles and small faces (below :data:`MIN_FACE` pixels at the detection scale) are missed.
- Framing: the forgers were trained on CelebA's aligned faces, CenterCrop 178 of the 178x218 image. A face
  is cropped as a square :data:`CROP_SCALE` times its detected box, shifted by :data:`CROP_SHIFT` (both
  measured by running this detector on CelebA's aligned faces, :func:`celeba_framing`) and
  rotated so that the eyes are level when both are found: a similarity transform, resampled with
  ``affine_grid``/``grid_sample`` after an antialiased downscale.
- Paste back: the perturbation of a crop (``x_adv_crop - crop``) is warped back with the inverse transform,
  weighted by a mask that is 1 inside the crop and falls smoothly (raised cosine) to 0 over its outer
  :data:`FEATHER` fraction, added to the photo, rounded to 8 bits and held to the method's RGB cap.
  Every pixel outside the faces' crop squares is left exactly as it was.
- Round trip: adversarial perturbations barely survive that resampling (nor a crop one pixel off), so the
  protection is optimised through :class:`RoundTrip`, a differentiable simulation of the paste back and
  of an attacker's new crop.

Coordinates are continuous pixel coordinates of the photo (pixel ``i`` covers ``[i, i + 1)``), x to the
right and y down; a box is ``(x, y, w, h)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# Measured with this detector on the first 400 CelebA aligned faces of the validation split (faces found
# in 381; :func:`celeba_framing` per face, medians): the 178 px square the forgers were trained on is 1.76
# detected-box widths wide (10th-90th percentiles 1.59-1.98), its centre 0.00 box widths right of
# (-0.02-0.02) and 0.14 above (0.12-0.16) the box centre. The eyes, found in 311 of them, are level to
# within 3 degrees (10th-90th percentiles), 0.39 box widths apart.
CROP_SCALE = 1.76
CROP_SHIFT = (0.0, -0.14)
FEATHER = 0.12  # outer fraction of the crop side over which the perturbation fades out
DETECT_SIDE = 1024  # photos are downscaled to this long side (at most) for detection
MIN_FACE = 24  # smallest face (pixels, at the detection scale)
MIN_VOTES = 8  # overlapping raw detections a face needs (half as many when both eyes are found in it)
MAX_TILT = 25.0  # degrees: an eye pair tilted more than this is not trusted
DEFAULT_MAX_FACES = 8
TRIP_SCALE = 4  # the paste-back round trip is simulated at most at this many times the crop's size

FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
EYE_CASCADE = "haarcascade_eye.xml"

Box = tuple[float, float, float, float]
Point = tuple[float, float]


@dataclass(frozen=True)
class Face:
    """A detected face: ``box`` (x, y, w, h) in photo pixels; ``score`` the detector's votes (overlapping
    detections merged into this one, higher is surer); ``landmarks`` the eye centres when both were found
    (``eye_left`` is the eye on the left of the picture)."""

    box: Box
    score: float
    landmarks: dict[str, Point] | None = None

    @property
    def center(self) -> Point:
        x, y, w, h = self.box
        return x + w / 2, y + h / 2

    @property
    def angle(self) -> float:
        """In-plane rotation (radians, clockwise on screen) that levels the eyes; 0 without landmarks."""
        if not self.landmarks:
            return 0.0
        (lx, ly), (rx, ry) = self.landmarks["eye_left"], self.landmarks["eye_right"]
        return math.atan2(ry - ly, rx - lx)

    def frame(self) -> Frame:
        """The square the forgers should see of this face (CelebA framing)."""
        w = self.box[2]
        side = CROP_SCALE * w
        cx, cy = self.center
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dx, dy = CROP_SHIFT[0] * w, CROP_SHIFT[1] * w
        return Frame(cx + cos * dx - sin * dy, cy + sin * dx + cos * dy, side, self.angle)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"box": [round(float(v), 1) for v in self.box], "score": float(self.score)}
        if self.landmarks:
            out["landmarks"] = {k: [round(float(v), 1) for v in p] for k, p in self.landmarks.items()}
        return out


@dataclass(frozen=True)
class Framing:
    """How differently an attacker's detector may frame a face than the protection did.

    Gaussian errors with standard deviations ``shift`` (centre, fraction of the side, per axis),
    ``log_scale`` and ``angle`` (degrees), clipped at ``clip`` of them, plus a log-scale offset drawn
    uniformly from +-``scale_span``. The span is for what no Gaussian around our own framing covers: detectors
    calibrated to the same CelebA framing disagree *systematically* on other photos (benchmarks/results/
    detectors.md: on UTKFace, MTCNN's square is 0.22 in log-scale larger than the Haar cascade's, 10th-90th
    percentiles 0.14-0.31; on CelebA they agree to sigma 0.07), so an attacker's crop may be a quarter larger
    or smaller than ours. The angle's 2 degrees is Haar's disagreement with MTCNN (sigma 1.9-2.2); MediaPipe's
    BlazeFace, measured there too, agrees with MTCNN on scale (sigma 0.05-0.07, no offset) but turns by sigma
    3.2-3.7 degrees.
    """

    shift: float = 0.01
    log_scale: float = 0.0
    angle: float = 2.0
    scale_span: float = 0.25
    clip: float = 2.5

    def span(self, u: float) -> float:
        """The uniform log-scale offset for a uniform draw ``u`` in [0, 1)."""
        return (2 * u - 1) * self.scale_span

    def offset(self, frame: Frame, generator: torch.Generator | None = None) -> Frame:
        """``frame`` as one draw of an attacker's detector frames it."""
        n = torch.randn(4, generator=generator).clamp(-self.clip, self.clip).tolist()
        u = float(torch.rand(1, generator=generator))
        side = frame.side * math.exp(n[2] * self.log_scale + self.span(u))
        return Frame(frame.cx + n[0] * self.shift * frame.side, frame.cy + n[1] * self.shift * frame.side, side,
                     frame.angle + math.radians(n[3] * self.angle))


# What a protection of a face in a photo is optimised over (see :class:`Framing`): the measured spread of one
# detector's framing under noise and between detectors' (centre sigma 0.01, angle sigma 2 degrees), and the
# systematic disagreement of calibrated detectors on scale. Measured on aligned crops (benchmarks/results/
# framing-robustness-crops.md): a perturbation made for one scale is void 10 % off it; optimised over +-0.25,
# it holds at 0.8x-1.25x.
PHOTO_FRAMING = Framing()


@dataclass(frozen=True)
class Frame:
    """A square in the photo: centre (cx, cy), side length and rotation (radians), in photo pixels."""

    cx: float
    cy: float
    side: float
    angle: float = 0.0

    def corners(self) -> np.ndarray:
        """(4, 2) corner points (x, y)."""
        half = self.side / 2
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        rot = np.array([[cos, -sin], [sin, cos]])
        return pts @ rot.T + np.array([self.cx, self.cy])

    def bounds(self, width: int, height: int, margin: int = 2) -> tuple[int, int, int, int] | None:
        """Integer (x0, y0, x1, y1) of the photo pixels the square touches (clipped), None if outside."""
        c = self.corners()
        x0 = max(0, math.floor(c[:, 0].min()) - margin)
        y0 = max(0, math.floor(c[:, 1].min()) - margin)
        x1 = min(width, math.ceil(c[:, 0].max()) + margin)
        y1 = min(height, math.ceil(c[:, 1].max()) + margin)
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1


# ----- detection ---------------------------------------------------------------------------------------


@cache
def _cascade(name: str) -> Any:
    import cv2
    import cv2.data

    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load the OpenCV cascade {path}")
    return cascade


def _grey(image: Any) -> np.ndarray:
    """uint8 (H, W) luma of a LoadedImage, a (1, 3, H, W) / (3, H, W) tensor in [-1, 1] or an (H, W, 3) uint8."""
    tensor = getattr(image, "tensor", image)
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach().float().cpu()
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
            t = t[0]
        rgb = ((t.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).numpy()
    else:
        rgb = np.asarray(tensor, dtype=np.float32)
        if rgb.ndim == 2:
            return np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    grey = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(np.round(grey), 0, 255).astype(np.uint8)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter) if inter > 0 else 0.0


def _overlap_small(a: Box, b: Box) -> float:
    """Intersection over the smaller box's area (a box nested in another scores 1)."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / min(aw * ah, bw * bh)


def detect_faces(
    image: Any, max_faces: int | None = None, min_votes: int = MIN_VOTES, detect_side: int = DETECT_SIDE
) -> list[Face]:
    """Frontal faces in a photo, surest (then largest) first.

    ``image``: a :class:`core.image.LoadedImage`, a (1, 3, H, W) tensor in [-1, 1] or an (H, W, 3) uint8
    array, upright (EXIF orientation applied, as :func:`core.image.load_image` does). Photos larger than
    ``detect_side`` are downscaled for detection; boxes are returned in the photo's pixels. A detection is
    kept with ``min_votes`` votes or more, or with half as many when both eyes are found in it.
    """
    import cv2

    grey = _grey(image)
    h, w = grey.shape
    scale = min(1.0, detect_side / max(h, w))
    small = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else grey
    if min(small.shape) < MIN_FACE:
        return []
    small = cv2.equalizeHist(small)
    boxes, votes = _cascade(FACE_CASCADE).detectMultiScale2(
        small, scaleFactor=1.1, minNeighbors=max(1, min_votes // 2 - 1), minSize=(MIN_FACE, MIN_FACE)
    )
    found = sorted(
        ((tuple(float(v) / scale for v in b), float(n)) for b, n in zip(boxes, np.ravel(votes), strict=True)),
        key=lambda bn: (-bn[1], -bn[0][2]),
    )
    kept: list[Face] = []
    for box, n in found:
        if n < min_votes / 2 or not all(box_iou(box, k.box) < 0.3 and _overlap_small(box, k.box) < 0.6 for k in kept):
            continue
        eyes = _eyes(grey, box)
        if n >= min_votes or eyes is not None:
            kept.append(Face(box, n, eyes))
        if max_faces is not None and len(kept) >= max_faces:
            break
    return kept


# Faces are protected where one detector frames them and checked where another does: the receipt's held-out
# detector (benchmarks/results/detectors.md: MTCNN finds 495 of 500 UTKFace faces, the Haar cascades 330; on
# CelebA the two frame a face within about 1 % of its side in centre, 7 % in scale and 2 degrees).
DETECTORS = ("mtcnn", "haar")
MTCNN_MIN_SCORE = 0.9  # O-Net face probability a protected face needs


def default_detector() -> str:
    """MTCNN when its weights (the facenet-pytorch wheel's) are installed, else the Haar cascades."""
    from core.detectors.mtcnn import weights_dir

    return "mtcnn" if weights_dir() is not None else "haar"


def held_out_detector(detector: str) -> str:
    """The detector a receipt re-detects faces with: not the one the protection used, where another exists."""
    other = "haar" if detector == "mtcnn" else "mtcnn"
    return other if other == "haar" or default_detector() == "mtcnn" else detector


def find_faces(image: Any, max_faces: int | None = None, detector: str | None = None) -> list[Face]:
    """Faces in a photo with ``detector`` (``mtcnn`` or ``haar``; default :func:`default_detector`), surest
    first; each face's :meth:`Face.frame` is its CelebA framing under that detector's calibration."""
    name = detector or default_detector()
    if name == "haar":
        return detect_faces(image, max_faces)
    if name == "mtcnn":
        from core.detectors.mtcnn import detect_faces as mtcnn_faces

        found: list[Face] = [f for f in mtcnn_faces(image) if f.score >= MTCNN_MIN_SCORE]
        return found[:max_faces] if max_faces is not None else found
    raise ValueError(f"unknown face detector {name!r}; known: {', '.join(DETECTORS)}")


def _eyes(grey: np.ndarray, box: Box) -> dict[str, Point] | None:
    """Both eye centres inside a face box (photo pixels), or None when no plausible pair is found."""
    import cv2

    x, y, w, h = box
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(grey.shape[1], int(x + w)), min(grey.shape[0], int(y + 0.62 * h))
    if x1 - x0 < 16 or y1 - y0 < 8:
        return None
    roi = grey[y0:y1, x0:x1]
    k = 160.0 / (x1 - x0)  # eyes searched on the face scaled to 160 px wide
    roi = cv2.resize(roi, (160, max(8, round((y1 - y0) * k))), interpolation=cv2.INTER_AREA if k < 1
                     else cv2.INTER_LINEAR)
    roi = cv2.equalizeHist(roi)
    eyes = _cascade(EYE_CASCADE).detectMultiScale(roi, scaleFactor=1.05, minNeighbors=3, minSize=(14, 14),
                                                  maxSize=(64, 64))
    centres = [((ex + ew / 2) / k + x0, (ey + eh / 2) / k + y0, ew / k) for ex, ey, ew, eh in eyes]
    lefts = [c for c in centres if c[0] < x + 0.5 * w and c[1] > y + 0.15 * h]
    rights = [c for c in centres if c[0] >= x + 0.5 * w and c[1] > y + 0.15 * h]
    best: tuple[float, Point, Point] | None = None
    for lx, ly, ls in lefts:
        for rx, ry, rs in rights:
            dist = math.hypot(rx - lx, ry - ly)
            tilt = abs(math.degrees(math.atan2(ry - ly, rx - lx)))
            if not 0.25 * w <= dist <= 0.65 * w or tilt > MAX_TILT:
                continue
            cost = abs(dist / w - 0.42) + abs(ls - rs) / w + tilt / 90  # typical eye distance 0.42 box widths
            if best is None or cost < best[0]:
                best = (cost, (lx, ly), (rx, ry))
    if best is None:
        return None
    (lx, ly), (rx, ry) = best[1], best[2]
    return {"eye_left": (float(lx), float(ly)), "eye_right": (float(rx), float(ry))}


def celeba_framing(aligned: Any) -> tuple[float, float, float] | None:
    """How CelebA's training crop frames the face this detector finds in an aligned CelebA image (178x218):
    (crop side, crop centre x - box centre x, crop centre y - box centre y), in detected-box widths; None
    when no face is found. Their medians over many faces are :data:`CROP_SCALE` and :data:`CROP_SHIFT`."""
    found = detect_faces(aligned, max_faces=1)
    if not found:
        return None
    h, w = _grey(aligned).shape
    crop = min(178, w, h)  # core.data.preprocess_face: CenterCrop(178)
    left, top = round((w - crop) / 2), round((h - crop) / 2)
    (bx, by), bw = found[0].center, found[0].box[2]
    return crop / bw, (left + crop / 2 - bx) / bw, (top + crop / 2 - by) / bw


# ----- crop and paste back -----------------------------------------------------------------------------


def _theta(frame: Frame, width: float, height: float) -> torch.Tensor:
    """affine_grid's theta: crop coordinates in [-1, 1] -> normalised coordinates of a (width, height) image
    whose continuous pixel coordinates the frame is expressed in (align_corners=False)."""
    cos, sin = math.cos(frame.angle), math.sin(frame.angle)
    half = frame.side / 2
    return torch.tensor([
        [2 * half * cos / width, -2 * half * sin / width, 2 * frame.cx / width - 1],
        [2 * half * sin / height, 2 * half * cos / height, 2 * frame.cy / height - 1],
    ], dtype=torch.float64)


def align_crop(x: torch.Tensor, face: Face | Frame, size: int) -> torch.Tensor:
    """The face as the forgers expect it: a (1, 3, size, size) crop of the photo ``x`` (1, 3, H, W) in [-1, 1].

    The region is first downscaled (antialiased) to about the crop's resolution, then resampled
    (bilinear) through the similarity transform; outside the photo the border pixels are repeated.
    Not rounded: callers quantise it when it stands for a delivered image.
    """
    frame = face.frame() if isinstance(face, Face) else face
    h, w = x.shape[-2:]
    bounds = frame.bounds(w, h)
    if bounds is None:
        bounds = (0, 0, w, h)
    x0, y0, x1, y1 = bounds
    region = x[..., y0:y1, x0:x1].float()
    # normalised coordinates do not change when the region is resized: theta is computed once, exactly
    theta = _theta(Frame(frame.cx - x0, frame.cy - y0, frame.side, frame.angle), x1 - x0, y1 - y0)
    factor = size / frame.side  # crop pixels per photo pixel
    if factor < 1:
        shape = (max(1, round((y1 - y0) * factor)), max(1, round((x1 - x0) * factor)))
        region = F.interpolate(region, size=shape, mode="bilinear", antialias=True, align_corners=False)
    n = region.shape[0]
    grid = F.affine_grid(theta.to(region)[None].expand(n, -1, -1), [n, 3, size, size], align_corners=False)
    return F.grid_sample(region, grid, mode="bilinear", padding_mode="border", align_corners=False)


def feather_mask(size: int, feather: float = FEATHER, device: torch.device | str = "cpu") -> torch.Tensor:
    """(size, size) weights: 1 inside, a raised cosine down to 0 (the outermost pixels) over the outer
    ``feather`` of each side."""
    i = torch.arange(size, device=device, dtype=torch.float32)
    # 0 on the outermost ring of pixels, so that bilinear resampling never reaches outside the square
    edge = torch.minimum(i, size - 1 - i) / max(feather * size, 1.0)
    ramp = torch.where(edge >= 1, torch.ones_like(edge), 0.5 - 0.5 * torch.cos(math.pi * edge.clamp(0, 1)))
    return ramp[:, None] * ramp[None, :]


def _warp_back(
    delta: torch.Tensor, mask: torch.Tensor, frame: Frame, bounds: tuple[int, int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop's perturbation (1, 3, S, S) times ``mask`` (1, 1, S, S), and the mask itself, resampled onto the
    photo pixels ``bounds`` (x0, y0, x1, y1) through the inverse of ``frame``'s similarity (bilinear)."""
    x0, y0, x1, y1 = bounds
    # photo pixel centres of the region -> crop coordinates in [-1, 1]
    ys = torch.arange(y0, y1, device=delta.device, dtype=torch.float64) + 0.5 - frame.cy
    xs = torch.arange(x0, x1, device=delta.device, dtype=torch.float64) + 0.5 - frame.cx
    cos, sin = math.cos(frame.angle), math.sin(frame.angle)
    half = frame.side / 2
    u = (cos * xs[None, :] + sin * ys[:, None]) / half
    v = (-sin * xs[None, :] + cos * ys[:, None]) / half
    grid = torch.stack([u, v], dim=-1)[None].to(delta.dtype)
    d = F.grid_sample(delta * mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = F.grid_sample(mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return d, m


def paste_back(
    x: torch.Tensor,
    x_adv_crops: torch.Tensor,
    faces: Sequence[Face | Frame],
    crops: torch.Tensor,
    finalize: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    feather: float = FEATHER,
) -> torch.Tensor:
    """The photo ``x`` (1, 3, H, W) with each face's perturbation ``x_adv_crops[i] - crops[i]`` mapped back.

    Each perturbation is weighted by :func:`feather_mask` and warped to the photo with the inverse of its
    face's transform (bilinear); where faces overlap the weighted perturbations are averaged, so the result
    is never larger than the largest one. The sum is added to ``x`` and passed through ``finalize`` (a
    protection's: 8-bit rounding and its RGB cap; plain 8-bit rounding when None). Pixels outside every
    face square get no perturbation and are copied from ``x`` exactly, bit for bit.
    """
    from core.image import quantize

    if x_adv_crops.shape != crops.shape or x_adv_crops.shape[0] != len(faces):
        raise ValueError(f"{len(faces)} faces, crops {tuple(crops.shape)}, protected crops {tuple(x_adv_crops.shape)}")
    h, w = x.shape[-2:]
    frames = [f.frame() if isinstance(f, Face) else f for f in faces]
    placed = [(i, b) for i, b in enumerate(fr.bounds(w, h) for fr in frames) if b is not None]
    if not placed:
        return x.clone()
    # work in the window covering every face square: the rest of a large photo is never touched
    wx0, wy0 = min(b[0] for _, b in placed), min(b[1] for _, b in placed)
    wx1, wy1 = max(b[2] for _, b in placed), max(b[3] for _, b in placed)
    total = torch.zeros((1, 3, wy1 - wy0, wx1 - wx0), dtype=torch.float32, device=x.device)
    weight = torch.zeros((1, 1, wy1 - wy0, wx1 - wx0), dtype=torch.float32, device=x.device)
    delta = (x_adv_crops - crops).float().to(x.device)
    mask = feather_mask(crops.shape[-1], feather, x.device)[None, None]
    for i, (x0, y0, x1, y1) in placed:
        d, m = _warp_back(delta[i : i + 1], mask, frames[i], (x0, y0, x1, y1))
        total[..., y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] += d
        weight[..., y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0] += m
    touched = weight > 0
    window = x[..., wy0:wy1, wx0:wx1]
    summed = total / weight.clamp(min=1.0)  # averaged where faces overlap (weights above 1), else as is
    candidate = (window + summed.to(x.dtype)).clamp(-1, 1)
    done = finalize(window, candidate) if finalize is not None else quantize(candidate)
    out = x.clone()
    out[..., wy0:wy1, wx0:wx1] = torch.where(touched, done, window)
    return out


class RoundTrip:
    """What a forger sees of a face once its crop's perturbation has been pasted back into the photo and the
    face cropped again by an attacker: a differentiable stand-in, used as the protection's EoT transform.

    A perturbation optimised on the crop alone hardly survives the trip (bilinear upsampling into the
    photo, antialiased downsampling out of it, a framing a pixel off: even a [1, 2, 1] blur voids most of
    it). The trip is simulated with the very resampling of :func:`paste_back` and :func:`align_crop`, per
    face, on a canvas of the photo around the face (scaled down to at most :data:`TRIP_SCALE` times the crop
    for large faces), with the attacker's framing drawn from ``framing`` (None: our own).

    The attacker's new crop moves the face as well as its perturbation: :meth:`pair` crops the protected and
    the clean canvas with one draw, so that the forger's edits are compared as the receipt compares them.
    (It once moved the perturbation alone over the face at our framing; on 4 aligned 128 px faces, +-0.25
    zoom, pgd 40 steps, that optimised about as well, 80-100 % against 85-100 % at 0.8x-1.25x, but the
    references then were not what the receipt compares with.)

    Args:
        crops: the clean crops (N, 3, S, S) the protection perturbs (the same batch, in order).
        frames: each crop's square in its photo and the photo (1, 3, H, W); None for a crop that is not a
            face's (passed through unchanged).
        then: the protection's own EoT transform (JPEG, blur, ...), applied after the trip (one draw for both
            members of a pair).
        budget: (N, 1, S, S) weights of each crop's perturbation (e.g. :func:`core.channel.texture_mask`), the
            share of it that is delivered; None: all of it.
    """

    def __init__(
        self,
        crops: torch.Tensor,
        frames: Sequence[tuple[Frame, torch.Tensor] | None],
        feather: float = FEATHER,
        framing: Framing | None = PHOTO_FRAMING,
        then: Callable[..., torch.Tensor] | None = None,
        budget: torch.Tensor | None = None,
    ) -> None:
        if len(frames) != crops.shape[0]:
            raise ValueError(f"{crops.shape[0]} crops but {len(frames)} frames")
        self.crops = crops
        self.budget = budget
        size = crops.shape[-1]
        self.canvases: list[tuple[Frame, torch.Tensor] | None] = []
        for item in frames:
            self.canvases.append(None if item is None else _canvas(item[0], item[1], size, framing))
        self.mask = feather_mask(size, feather, crops.device)[None, None]
        self.framing = framing
        self.then = then

    def pair(self, x_adv: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(protected, clean) attacker crops under one shared draw; ``x`` is the clean batch (the crops)."""
        if generator is None:  # a pair must share its draws: they come from one generator
            generator = torch.Generator().manual_seed(int(torch.randint(2**31, (1,))))
        size = x_adv.shape[-1]
        delta = x_adv - self.crops
        if self.budget is not None:
            delta = delta * self.budget
        seen, ref = [], []
        for i, canvas in enumerate(self.canvases):  # faces differ in size: one at a time
            if canvas is None:
                seen.append(self.crops[i : i + 1] + delta[i : i + 1])
                ref.append(x[i : i + 1])
                continue
            frame, clean = canvas
            bounds = (0, 0, clean.shape[-1], clean.shape[-2])
            d, _ = _warp_back(delta[i : i + 1], self.mask.to(delta.dtype), frame, bounds)
            off = frame if self.framing is None else self.framing.offset(frame, generator)
            seen.append(align_crop((clean + d).clamp(-1, 1), off, size))
            with torch.no_grad():
                ref.append(align_crop(clean, off, size))
        out, goal = torch.cat(seen), torch.cat(ref)
        if self.then is not None:
            state = generator.get_state()
            out = self.then(out, generator=generator)
            after = generator.get_state()
            generator.set_state(state)
            with torch.no_grad():
                goal = self.then(goal, generator=generator)
            generator.set_state(after)
        return out, goal

    def __call__(self, x_adv: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.pair(x_adv, self.crops, generator)[0]


def _canvas(frame: Frame, photo: torch.Tensor, size: int, framing: Framing | None) -> tuple[Frame, torch.Tensor]:
    """The clean photo around ``frame`` as far as any attacker's square may reach, scaled down to at most
    :data:`TRIP_SCALE` times the crop, and the frame in its coordinates."""
    h, w = photo.shape[-2:]
    grow = 1.0
    if framing is not None:  # the largest, furthest and most tilted square a draw can give
        f = framing
        tilt = min(math.radians(f.clip * f.angle), math.pi / 4)
        grow = math.exp(f.clip * f.log_scale + f.scale_span) * (math.cos(tilt) + math.sin(tilt)) + 2 * f.clip * f.shift
    reach = Frame(frame.cx, frame.cy, frame.side * grow, frame.angle)
    x0, y0, x1, y1 = reach.bounds(w, h) or (0, 0, w, h)
    region = photo[..., y0:y1, x0:x1].float()
    k = min(1.0, TRIP_SCALE * size / frame.side)
    if k < 1.0:  # by the factor itself, not to a rounded size: the frame below is placed by k exactly
        region = F.interpolate(region, scale_factor=k, mode="bilinear", antialias=True, align_corners=False,
                               recompute_scale_factor=False)
    # the region shifted to the origin and scaled by k (keeping its sub-pixel phase at k = 1)
    return Frame((frame.cx - x0) * k, (frame.cy - y0) * k, frame.side * k, frame.angle), region


def face_support(x: torch.Tensor, faces: Sequence[Face | Frame]) -> torch.Tensor:
    """(H, W) bool: the pixels a :func:`paste_back` of these faces may change (inside their squares)."""
    h, w = x.shape[-2:]
    out = torch.zeros((h, w), dtype=torch.bool, device=x.device)
    for face in faces:
        frame = face.frame() if isinstance(face, Face) else face
        ys = torch.arange(h, device=x.device, dtype=torch.float64)[:, None] + 0.5 - frame.cy
        xs = torch.arange(w, device=x.device, dtype=torch.float64)[None, :] + 0.5 - frame.cx
        cos, sin = math.cos(frame.angle), math.sin(frame.angle)
        u = (cos * xs + sin * ys).abs()
        v = (-sin * xs + cos * ys).abs()
        out |= (u < frame.side / 2) & (v < frame.side / 2)
    return out
