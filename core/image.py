"""Images in and out: any common still image -> float tensor (1, 3, H, W) in [-1, 1], and back to PNG.

- EXIF orientation is applied; CMYK, palette, grey, 16-bit and alpha inputs all become RGB
  (16-bit greyscale keeps its precision until the 8-bit output; Pillow itself reduces 16-bit RGB to 8 bits);
  alpha and the ICC colour profile are kept aside and re-attached on save.
- Output is PNG by default: lossless, so a protection is never silently destroyed by re-encoding.
- :func:`quantize` rounds to the 8-bit grid a user receives; every bound and metric is checked after it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
ORIENTATION_TAG = 0x0112
GPS_IFD = 0x8825
LOSSY_FORMATS = {"JPEG", "WEBP"}
SUFFIX_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# What a folder of photos may hold (anything Pillow decodes as a still image is accepted when named).
INPUT_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


class ImageError(ValueError):
    """The input is not an image we can protect (corrupt, truncated, animated, too large...)."""


@dataclass
class LoadedImage:
    """A decoded photo: ``tensor`` (1, 3, H, W) float32 in [-1, 1]; ``alpha`` (H, W) uint8 or None."""

    tensor: torch.Tensor
    alpha: np.ndarray | None
    format: str | None
    icc_profile: bytes | None = None
    # The source's EXIF block (camera, date, GPS, ...) without its orientation, which the pixels already
    # have: written back only when a user asks to keep the metadata (see encode_image).
    exif: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return int(self.tensor.shape[-1]), int(self.tensor.shape[-2])


def _open(source: str | Path | bytes | IO[bytes], max_pixels: int) -> Image.Image:
    data: IO[bytes] | str | Path = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(data)
            try:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(f"image has {w}x{h} = {w * h} pixels, above the limit of {max_pixels}")
                if getattr(img, "n_frames", 1) > 1:
                    raise ImageError("animated images are not supported; send a still image")
                img.load()
            except BaseException:
                img.close()
                raise
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"no such file: {source!s}") from None
    except UnidentifiedImageError:
        raise ImageError("not a recognised image (expected JPEG, PNG, WebP, ...)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"cannot decode image: {exc}") from None
    return img


def _to_float_rgb(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """RGB float32 (H, W, 3) in [0, 1] and alpha uint8 (H, W) or None."""
    alpha = None
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        alpha = np.asarray(img.getchannel("A"), dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / top, 0.0, 1.0).astype(np.float32)
        return np.repeat(grey[..., None], 3, axis=2), alpha
    if img.mode == "F":
        grey = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(grey[..., None], 3, axis=2), alpha
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, alpha


def load_image(source: str | Path | bytes | IO[bytes], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode a still image (path, bytes or file) into a [-1, 1] tensor with EXIF orientation applied."""
    img = _open(source, max_pixels)
    fmt = img.format
    icc = img.info.get("icc_profile") or None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # broken EXIF blocks raise a variety of errors
        raise ImageError(f"cannot apply EXIF orientation: {exc}") from None
    rgb, alpha = _to_float_rgb(img)
    tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None] * 2.0 - 1.0
    return LoadedImage(tensor.contiguous(), alpha, fmt, icc if img.mode != "CMYK" else None, _exif_of(img))


def _exif_of(img: Image.Image) -> bytes | None:
    """The EXIF block with the orientation tag dropped (the pixels are upright now), or None."""
    try:
        exif = img.getexif()
        exif.pop(ORIENTATION_TAG, None)
        return exif.tobytes() if len(exif) or exif.get_ifd(GPS_IFD) else None
    except Exception:  # a broken EXIF block is metadata we cannot keep, not a photo we cannot protect
        return None


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 8-bit grid a user receives (values stay in [-1, 1])."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) in [-1, 1] -> (H, W, 3) uint8."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    arr = torch.round((x.detach().float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)
    return arr.permute(1, 2, 0).cpu().numpy()


def from_uint8(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(arr.astype(np.float32).transpose(2, 0, 1).copy())[None] / 127.5 - 1.0


def to_pil(x: torch.Tensor, alpha: np.ndarray | None = None) -> Image.Image:
    img = Image.fromarray(to_uint8(x), "RGB")
    if alpha is not None:
        img.putalpha(Image.fromarray(alpha, "L"))
    return img


def encode_image(
    x: torch.Tensor, fmt: str = "PNG", alpha: np.ndarray | None = None, quality: int = 95,
    icc_profile: bytes | None = None, exif: bytes | None = None,
) -> bytes:
    """Encode a [-1, 1] image; PNG unless a lossy format is asked for explicitly.

    No metadata (EXIF, GPS, text) is written unless ``exif`` is given (a user who asked to keep the
    source's, see :attr:`LoadedImage.exif`); the ICC colour profile the pixels are in is, when given, so
    that they are displayed with the colours of the original.
    """
    fmt = fmt.upper()
    if fmt == "JPG":
        fmt = "JPEG"
    if fmt not in {"PNG", "JPEG", "WEBP"}:
        raise ImageError(f"unsupported output format {fmt!r}; use PNG, JPEG or WEBP")
    img = to_pil(x, None if fmt == "JPEG" else alpha)
    buf = io.BytesIO()
    extra: dict[str, Any] = {"icc_profile": icc_profile} if icc_profile else {}
    if exif:
        extra["exif"] = exif
    if fmt == "PNG":
        img.save(buf, "PNG", optimize=False, compress_level=6, **extra)
    else:
        img.save(buf, fmt, quality=quality, **extra)
    return buf.getvalue()


def save_image(
    x: torch.Tensor, path: str | Path, alpha: np.ndarray | None = None, quality: int = 95,
    icc_profile: bytes | None = None, exif: bytes | None = None,
) -> Path:
    """Write an image; the format follows the suffix (``.png`` unless told otherwise); see encode_image."""
    path = Path(path)
    fmt = SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"unsupported output suffix {path.suffix!r}; use .png, .jpg or .webp")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_image(x, fmt, alpha, quality, icc_profile, exif))
    return path


def make_grid(rows: list[list[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    """Tile rows of (3, H, W) images (all the same size) into one (1, 3, H', W') image on white."""
    if not rows or not rows[0]:
        raise ValueError("empty grid")
    h, w = rows[0][0].shape[-2:]
    n_cols = max(len(r) for r in rows)
    grid = torch.ones(3, len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            img = img[0] if img.dim() == 4 else img
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, top : top + h, left : left + w] = img.detach().float().cpu().clamp(-1, 1)
    return grid[None]
