from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.image import ImageError, encode_image, load_image, quantize, save_image, to_uint8


def gradient_rgb(w: int = 40, h: int = 24) -> np.ndarray:
    xs = np.linspace(0, 255, w, dtype=np.float32)
    ys = np.linspace(0, 255, h, dtype=np.float32)
    return np.stack([np.tile(xs, (h, 1)), np.tile(ys[:, None], (1, w)), np.full((h, w), 90.0)], -1).astype(np.uint8)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_png_round_trip_is_exact(tmp_path: Path) -> None:
    arr = gradient_rgb()
    loaded = load_image(encode(Image.fromarray(arr), "PNG"))
    assert loaded.tensor.shape == (1, 3, 24, 40)
    assert loaded.tensor.min() >= -1 and loaded.tensor.max() <= 1
    assert np.array_equal(to_uint8(loaded.tensor), arr)
    out = save_image(loaded.tensor, tmp_path / "o.png")
    assert np.array_equal(np.asarray(Image.open(out)), arr)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_inputs_decode(fmt: str) -> None:
    arr = gradient_rgb()
    loaded = load_image(encode(Image.fromarray(arr), fmt, quality=95))
    assert loaded.format == fmt
    assert np.abs(to_uint8(loaded.tensor).astype(int) - arr).mean() < 4


def test_exif_orientation_is_applied() -> None:
    arr = gradient_rgb(40, 24)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    loaded = load_image(encode(img, "JPEG", exif=exif, quality=95))
    assert loaded.size == (24, 40)  # width and height swapped


def test_cmyk_palette_grey_alpha_and_16_bit() -> None:
    arr = gradient_rgb()
    cmyk = load_image(encode(Image.fromarray(arr).convert("CMYK"), "JPEG", quality=95))
    assert cmyk.tensor.shape == (1, 3, 24, 40)
    pal = load_image(encode(Image.fromarray(arr).convert("P"), "PNG"))
    assert pal.tensor.shape == (1, 3, 24, 40)
    grey = load_image(encode(Image.fromarray(arr).convert("L"), "PNG"))
    assert torch.equal(grey.tensor[:, 0], grey.tensor[:, 1])
    rgba = Image.fromarray(arr).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full((24, 40), 77, np.uint8)))
    with_alpha = load_image(encode(rgba, "PNG"))
    assert with_alpha.alpha is not None and with_alpha.alpha[0, 0] == 77
    back = Image.open(io.BytesIO(encode_image(with_alpha.tensor, "PNG", with_alpha.alpha)))
    assert back.mode == "RGBA" and back.getpixel((0, 0))[3] == 77
    deep = np.linspace(0, 65535, 24 * 40).reshape(24, 40).astype(np.uint16)
    sixteen = load_image(encode(Image.fromarray(deep), "PNG"))
    assert sixteen.tensor[0, 0, -1, -1] == pytest.approx(1.0)
    assert sixteen.tensor[0, 0, 0, 0] == pytest.approx(-1.0)
    # 16-bit precision survives until output: more distinct levels than 8 bits could hold.
    assert len(torch.unique(sixteen.tensor)) > 256


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"definitely not an image", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode|not a recognised"),
    ],
)
def test_bad_bytes_are_clear_errors(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(data)


def test_truncated_jpeg_is_an_error() -> None:
    data = encode(Image.fromarray(gradient_rgb(64, 64)), "JPEG")
    with pytest.raises(ImageError):
        load_image(data[: len(data) // 2])


def test_animated_and_oversized_images_are_refused() -> None:
    frames = [Image.fromarray(gradient_rgb()), Image.fromarray(255 - gradient_rgb())]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match="animated"):
        load_image(buf.getvalue())
    with pytest.raises(ImageError, match="limit"):
        load_image(encode(Image.fromarray(gradient_rgb()), "PNG"), max_pixels=100)
    with pytest.raises(ImageError, match="no such file"):
        load_image(Path("/nonexistent/x.png"))


def test_quantize_exact_values() -> None:
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.2])
    q = quantize(x)
    assert torch.allclose((q + 1) * 127.5, torch.tensor([0.0, 0.0, 128.0, 191.0, 255.0]))
    assert torch.equal(quantize(q), q)


def test_output_formats() -> None:
    x = torch.zeros(1, 3, 8, 8)
    assert encode_image(x).startswith(b"\x89PNG")
    assert encode_image(x, "jpeg")[:2] == b"\xff\xd8"
    with pytest.raises(ImageError, match="unsupported"):
        encode_image(x, "gif")


def test_icc_profile_is_kept_and_exif_dropped() -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(gradient_rgb())
    exif = img.getexif()
    exif[0x8825] = {1: "N"}  # a GPS block
    exif[0x010F] = "PhoneMaker"
    loaded = load_image(encode(img, "JPEG", quality=95, icc_profile=icc, exif=exif))
    assert loaded.icc_profile == icc
    for fmt in ("PNG", "JPEG", "WEBP"):
        out = Image.open(io.BytesIO(encode_image(loaded.tensor, fmt, icc_profile=loaded.icc_profile)))
        assert out.info.get("icc_profile") == icc, fmt
        assert len(out.getexif()) == 0, fmt


def test_metadata_is_kept_only_when_asked_and_without_the_orientation() -> None:
    img = Image.fromarray(gradient_rgb())
    exif = img.getexif()
    exif[0x0112] = 6  # stored rotated
    exif[0x010F] = "PhoneMaker"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}
    loaded = load_image(encode(img, "JPEG", quality=95, exif=exif))
    assert loaded.size == (24, 40) and loaded.exif is not None  # rotated upright
    for fmt in ("PNG", "JPEG", "WEBP"):
        out = Image.open(io.BytesIO(encode_image(loaded.tensor, fmt, exif=loaded.exif))).getexif()
        assert out[0x010F] == "PhoneMaker", fmt
        assert out.get_ifd(0x8825)[1] == "N", fmt
        assert 0x0112 not in out, fmt  # the pixels are upright: a viewer must not rotate them again
        assert len(Image.open(io.BytesIO(encode_image(loaded.tensor, fmt))).getexif()) == 0, fmt
    plain = load_image(encode(Image.fromarray(gradient_rgb()), "PNG"))
    assert plain.exif is None
