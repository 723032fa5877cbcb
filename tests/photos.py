"""Synthetic photos with real faces for the tests: scikit-image's public-domain astronaut portrait pasted
into canvases, stored rotated with an EXIF orientation tag, up to a 12-megapixel phone photo."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from skimage import data

from core.receipt import RECEIPT_CONDITIONS

ASTRONAUT_FACE = (178.0, 69.0, 92.0, 92.0)  # where the detector finds her face in the 512x512 portrait
# PIL's exif_transpose turns a stored image upright with these; storing with the inverse gives the canvas back.
INVERSE_ORIENTATION = {1: None, 3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                       8: Image.Transpose.ROTATE_270, 5: Image.Transpose.TRANSPOSE}


def canvas(width: int, height: int, placements: list[tuple[np.ndarray, int, int]]) -> np.ndarray:
    """A smooth grey-blue background with each (picture, left, top) pasted in."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([90 + 60 * xx / width, 110 + 40 * yy / height, 140 + 0 * xx], axis=-1)
    out = base.astype(np.uint8)
    for pic, left, top in placements:
        out[top : top + pic.shape[0], left : left + pic.shape[1]] = pic
    return out


def astronaut(scale: float = 1.0) -> np.ndarray:
    img = data.astronaut()
    if scale == 1.0:
        return img
    size = round(512 * scale)
    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC))


def expected_face(left: int, top: int, scale: float) -> tuple[float, float, float]:
    """Centre (x, y) and width of the astronaut's face pasted at (left, top) with ``scale``."""
    x, y, w, h = ASTRONAUT_FACE
    return left + scale * (x + w / 2), top + scale * (y + h / 2), scale * w


def jpeg_with_orientation(upright: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose pixels are stored rotated and tagged so that a viewer (and load_image) shows ``upright``."""
    img = Image.fromarray(upright)
    method = INVERSE_ORIENTATION[orientation]
    stored = img.transpose(method) if method is not None else img
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=95, exif=exif)
    return buf.getvalue()


PHONE_SIZE = (3000, 4000)  # upright (width, height): 12 megapixels
PHONE_FACES = ((400, 500, 2.0), (1500, 2300, 2.4))  # (left, top, scale) of each astronaut


def phone_photo() -> tuple[bytes, np.ndarray]:
    """A 12 MP phone photo with two faces: a JPEG stored rotated (EXIF orientation 6) with a GPS tag, and the
    upright pixels a viewer shows. The background is textured, so "untouched" is a strong check."""
    width, height = PHONE_SIZE
    upright = canvas(width, height, [(astronaut(scale), left, top) for left, top, scale in PHONE_FACES])
    rng = np.random.default_rng(0)
    upright = np.clip(upright.astype(np.int16) + rng.integers(-6, 7, upright.shape), 0, 255).astype(np.uint8)
    for left, top, scale in PHONE_FACES:  # the faces as pasted, without the noise
        pic = astronaut(scale)
        upright[top : top + pic.shape[0], left : left + pic.shape[1]] = pic
    img = Image.fromarray(upright)
    stored = img.transpose(INVERSE_ORIENTATION[6])
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}  # GPSInfo: a location the output must not carry
    buf = io.BytesIO()
    stored.save(buf, "JPEG", quality=92, exif=exif)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).transpose(Image.Transpose.ROTATE_270))
    return buf.getvalue(), decoded


def check_phone_result(upright: np.ndarray, delivered: bytes, report: dict) -> None:  # type: ignore[type-arg]
    """The protected phone photo: full size, upright, no EXIF, both faces perturbed, the rest untouched, and a
    receipt per condition."""
    out = Image.open(io.BytesIO(delivered))
    assert out.format == "PNG" and out.size == PHONE_SIZE
    assert not out.getexif(), "EXIF (orientation, GPS) must not be written"
    pixels = np.asarray(out.convert("RGB")).astype(np.int16)
    assert report["protection"] == "faces" and report["faces_found"] == 2 and len(report["faces"]) == 2
    outside = np.ones(pixels.shape[:2], dtype=bool)
    for face in report["faces"]:
        x0, y0, x1, y1 = face["region"]
        outside[y0:y1, x0:x1] = False
        x, y, w, h = (round(v) for v in face["box"])
        inner = np.abs(pixels[y : y + h, x : x + w] - upright[y : y + h, x : x + w]).max(axis=-1)
        assert (inner > 0).mean() > 0.3, f"face at {face['box']} is not perturbed"
        assert face["within_budget"] is True
    assert np.array_equal(pixels[outside], upright[outside]), "a pixel outside the faces changed"
    centres = sorted((f["box"][0] + f["box"][2] / 2, f["box"][1] + f["box"][3] / 2) for f in report["faces"])
    for (cx, cy), (left, top, scale) in zip(centres, sorted(PHONE_FACES), strict=True):
        ex, ey, width = expected_face(left, top, scale)
        assert abs(cx - ex) < 0.2 * width and abs(cy - ey) < 0.2 * width
    assert list(report["receipt"]["conditions"]) == list(RECEIPT_CONDITIONS)
