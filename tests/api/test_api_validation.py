"""Inspection of photos and archives from headers and the zip central directory only."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from apitest import image_bytes, zip_bytes

from api.problems import problem_for
from service.config import Settings
from service.errors import InputRejected, InvalidJSON, TooLarge
from service.jsonlimits import json_depth, loads_bounded
from service.validation import inspect, sniff, webp_size, zip_entry_count

LIMITS = Settings(
    max_image_pixels=1_000_000,
    max_image_bytes=1_000_000,
    max_archive_entries=3,
    max_archive_uncompressed_bytes=100_000,
)


def check(data: bytes, **kw: bool) -> object:
    return inspect(io.BytesIO(data), len(data), LIMITS, **kw)


def status(data: bytes) -> tuple[int, str | None]:
    """The refusal as the gateway answers it: (HTTP status, problem slug)."""
    with pytest.raises(InputRejected) as exc:
        check(data)
    problem = problem_for(exc.value)
    return problem.status, problem.slug


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_images_by_magic(fmt: str) -> None:
    result = check(image_bytes(33, 17, fmt))
    assert result.kind == "image" and (result.width, result.height) == (33, 17)  # type: ignore[attr-defined]


def test_webp_header_variants() -> None:
    from PIL import Image

    for kwargs in ({"lossless": False}, {"lossless": True}, {"exif": b"Exif\0\0"}):
        buf = io.BytesIO()
        Image.new("RGBA", (37, 21)).save(buf, "WEBP", **kwargs)
        assert webp_size(buf.getvalue()[:30]) == (37, 21)


def png_header(width: int, height: int) -> bytes:
    """A PNG signature, IHDR and the header of an IDAT chunk whose data never follows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 10**6) + b"IDAT"


def test_pixels_counted_from_header_without_decoding() -> None:
    # No pixel data at all: only a header could have been read.
    assert check(png_header(1000, 1000)).width == 1000  # type: ignore[attr-defined]
    assert status(png_header(1001, 1000)) == (413, "too-many-pixels")
    assert status(png_header(60_000, 60_000)) == (413, "too-many-pixels")  # 3.6 gigapixels, not allocated


def test_rejections() -> None:
    assert sniff(b"GIF89a") is None
    assert status(b"GIF89a....") == (415, "unsupported-media-type")
    assert status(b"\xff\xd8\xff\xe0garbage") == (415, "unsupported-media-type")
    assert status(b"") == (422, "validation-error")
    assert status(b"\x89PNG\r\n\x1a\n" + b"\0" * 1_000_001) == (413, "too-large")


def test_archives_from_central_directory() -> None:
    good = zip_bytes(
        {"a.png": image_bytes(), "x/b.jpeg": image_bytes(fmt="JPEG"), "__MACOSX/._a.png": b"junk"}
    )
    result = check(good)
    assert result.kind == "archive" and result.entries == 2  # type: ignore[attr-defined]
    assert zip_entry_count(io.BytesIO(good), len(good)) == 3
    assert status(zip_bytes({f"{i}.png": image_bytes(2, 2) for i in range(4)})) == (413, "too-many-entries")
    # A bad entry alone leaves no usable image (422); next to a good one it is the worker's per-photo error.
    assert status(zip_bytes({"big.png": image_bytes(1001, 1000)})) == (422, "invalid-archive")
    assert status(zip_bytes({"fake.png": b"not a png"})) == (422, "invalid-archive")
    assert status(zip_bytes({"/abs.png": image_bytes()})) == (422, "invalid-archive")
    mixed = zip_bytes({"a.png": image_bytes(), "../evil.png": image_bytes(), "fake.png": b"not a png"})
    assert check(mixed).entries == 1  # type: ignore[attr-defined]
    assert status(zip_bytes({"a/../../b.png": image_bytes()})) == (422, "invalid-archive")
    assert status(zip_bytes({"notes.txt": b"x"})) == (422, "invalid-archive")
    assert status(zip_bytes({"a.png": image_bytes(), "zeros.bin": b"\0" * 200_000})) == (413, "too-large")
    assert status(b"PK\x03\x04" + b"\0" * 100) == (415, "unsupported-media-type")
    # Entries only checked from the directory when the data is remote (the worker re-checks them).
    assert check(zip_bytes({"fake.png": b"not a png"}), inspect_entries=False).entries == 1  # type: ignore[attr-defined]


def test_entry_count_read_before_parsing_directory() -> None:
    data = bytearray(zip_bytes({"a.png": image_bytes()}))
    eocd = data.rfind(b"PK\x05\x06")
    struct.pack_into("<H", data, eocd + 10, 60_000)  # claims 60,000 entries
    assert status(bytes(data)) == (413, "too-many-entries")


# ---- client JSON: size and nesting bounded before parsing (service.jsonlimits) ----------------


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        ("1", 0),
        ("[]", 1),
        ('{"a": [1, {"b": 2}]}', 3),
        ('"[[[{{{"', 0),  # brackets inside strings do not count
        (r'["\"[", [1]]', 2),  # nor after an escaped quote
        (r'["\\", [1]]', 2),  # an escaped backslash ends before the quote
        ('{"a":' * 5000 + "1" + "}" * 5000, 5000),
        ("[" * 100_000, 100_000),  # unclosed: still measured, never recursed into
        ('"' + "[" * 1000, 0),  # an unterminated string
    ],
)
def test_json_depth(text: str, depth: int) -> None:
    assert json_depth(text) == depth
    assert json_depth(text.encode()) == depth


def test_loads_bounded_refuses_deep_large_and_invalid_json() -> None:
    assert loads_bounded('{"a": [1, 2]}', max_depth=2, max_bytes=100) == {"a": [1, 2]}
    with pytest.raises(InvalidJSON) as deep:
        loads_bounded('{"a": [[1]]}', max_depth=2, max_bytes=100, loc="metadata")
    assert deep.value.extensions["errors"] == [
        {"loc": ["metadata"], "msg": "JSON nested 3 deep, limit 2", "type": "json_too_deep"}
    ]
    assert problem_for(deep.value).status == 422
    with pytest.raises(TooLarge):
        loads_bounded("[" + "1," * 100 + "1]", max_depth=2, max_bytes=100)
    with pytest.raises(InvalidJSON) as bad:
        loads_bounded("{not json", max_depth=2, max_bytes=100)
    assert bad.value.extensions["errors"][0]["type"] == "json_invalid"
