"""Inspect an uploaded photo or zip archive without decoding it (gateway and workers).

* type from the magic bytes (PNG, JPEG, WebP, zip), never from the client's claim;
* pixel count from the image header (Pillow's lazy ``Image.open`` reads the header only);
* entry count from the zip's end-of-central-directory record before the directory itself is parsed,
  then names, sizes and flags from the central directory; with ``inspect_entries`` (local files) each
  image entry's magic bytes and header are checked too.

Works on any seekable binary file: a local spooled upload or :class:`service.storage.S3RangeReader`.
Refusals are :class:`service.errors.InputRejected` subclasses (the gateway maps them to 413/415/422).
"""

from __future__ import annotations

import hashlib
import struct
import warnings
import zipfile
from dataclasses import dataclass
from typing import IO, Literal

from PIL import Image, UnidentifiedImageError

from service.config import Settings
from service.errors import (
    EmptyInput,
    InputRejected,
    InvalidArchive,
    TooLarge,
    TooManyEntries,
    TooManyPixels,
    UnsupportedMediaType,
)

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP"}
ZIP_TYPE = "application/zip"
ACCEPTED_TYPES = (*IMAGE_TYPES, ZIP_TYPE)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"


@dataclass(frozen=True)
class Inspected:
    kind: Literal["image", "archive"]
    content_type: str
    size: int
    width: int | None = None
    height: int | None = None
    entries: int | None = None  # image entries of an archive
    uncompressed_bytes: int | None = None


def sniff(head: bytes) -> str | None:
    """The media type the first bytes announce, or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith((b"PK\x03\x04", _EOCD)):
        return ZIP_TYPE
    return None


def unsupported(detail: str) -> UnsupportedMediaType:
    return UnsupportedMediaType(detail, accepted=list(ACCEPTED_TYPES))


def check_image_header(
    f: IO[bytes], content_type: str, settings: Settings, what: str = "image"
) -> tuple[int, int]:
    """(width, height) from the header; :class:`UnsupportedMediaType` for an unreadable header,
    :class:`TooManyPixels` over the pixel limit."""
    fmt = IMAGE_TYPES[content_type]
    if fmt == "WEBP":  # Pillow's WebP plugin reads (and allocates) the whole image: parse the header here
        size = webp_size(f.read(30))
        if size is None:
            raise unsupported(f"{what}: not a readable WEBP image header")
        return _check_pixels(*size, settings, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(f, formats=[fmt]) as im:  # lazy: reads the header, decodes nothing
                width, height = im.size
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"{what}: {exc}", limit=settings.max_image_pixels) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise unsupported(f"{what}: not a readable {fmt} image header") from exc
    return _check_pixels(width, height, settings, what)


def _check_pixels(width: int, height: int, settings: Settings, what: str) -> tuple[int, int]:
    if width <= 0 or height <= 0:
        raise unsupported(f"{what}: empty image")
    if width * height > settings.max_image_pixels:
        raise TooManyPixels(
            f"{what}: {width}x{height} = {width * height} pixels, limit {settings.max_image_pixels}",
            limit=settings.max_image_pixels,
            width=width,
            height=height,
        )
    return width, height


def webp_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first 30 bytes of a WebP file (VP8, VP8L or VP8X), or None."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def zip_entry_count(f: IO[bytes], size: int) -> int:
    """Total entries from the end-of-central-directory record (zip64 aware), without parsing the directory."""
    tail_len = min(size, 22 + 65535)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise unsupported("not a zip archive (no end of central directory)")
    (_sig, _disk, _cd_disk, _n_disk, total, _cd_size, _cd_offset, _clen) = struct.unpack(
        "<4s4H2LH", tail[at : at + 22]
    )
    if total != 0xFFFF:
        return int(total)
    loc = at - 20
    if loc < 0 or tail[loc : loc + 4] != _ZIP64_LOCATOR:
        raise unsupported("not a zip archive (bad zip64 locator)")
    (_sig, _disk, eocd64_offset, _disks) = struct.unpack("<4sLQL", tail[loc : loc + 20])
    f.seek(eocd64_offset)
    record = f.read(56)
    if record[:4] != _ZIP64_EOCD or len(record) < 56:
        raise unsupported("not a zip archive (bad zip64 record)")
    return int(struct.unpack("<Q", record[32:40])[0])


def is_image_entry(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return (
        not name.startswith("__MACOSX/")
        and not base.startswith(".")
        and base.lower().endswith(IMAGE_EXTENSIONS)
    )


def check_archive(f: IO[bytes], size: int, settings: Settings, inspect_entries: bool) -> tuple[int, int]:
    """(image entries, declared uncompressed bytes); :class:`InputRejected` otherwise."""
    count = zip_entry_count(f, size)
    if count > settings.max_archive_entries:
        raise TooManyEntries(
            f"archive has {count} entries, limit {settings.max_archive_entries}", limit=settings.max_archive_entries
        )
    f.seek(0)
    try:
        zf = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise unsupported(f"not a valid zip archive: {exc}") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > settings.max_archive_entries:
            raise TooManyEntries(f"archive has {len(infos)} entries", limit=settings.max_archive_entries)
        # A bad entry (unsafe name, encryption, unknown compression, not an image, over a limit) is a
        # per-photo error in the job's report, not a refusal: the worker re-checks and reports every
        # entry. Only an archive without a single usable image is refused here.
        images: list[zipfile.ZipInfo] = []
        skipped: list[str] = []
        total = 0
        for info in infos:
            name = info.filename
            if info.is_dir():
                continue
            total += info.file_size
            reason = entry_problem(info)
            if reason:
                skipped.append(f"{name}: {reason}")
            elif is_image_entry(name):
                images.append(info)
        if total > settings.max_archive_uncompressed_bytes:
            raise TooLarge(
                f"archive expands to {total} bytes, limit {settings.max_archive_uncompressed_bytes}",
                limit=settings.max_archive_uncompressed_bytes,
            )
        if inspect_entries:
            images = [info for info in images if _usable(zf, info, settings, skipped)]
        if not images:
            why = f" ({'; '.join(skipped[:3])})" if skipped else ""
            raise InvalidArchive(f"no usable images ({', '.join(IMAGE_EXTENSIONS)}) in the archive{why}")
    return len(images), total


def entry_problem(info: zipfile.ZipInfo) -> str | None:
    """Why an entry cannot be extracted safely, from the central directory alone (None if it can)."""
    name = info.filename
    if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name:
        return "unsafe entry name"
    if info.flag_bits & 0x1:
        return "encrypted entry"
    if info.compress_type not in ZIP_METHODS:
        return "unsupported compression method"
    return None


def _usable(zf: zipfile.ZipFile, info: zipfile.ZipInfo, settings: Settings, skipped: list[str]) -> bool:
    """Whether an image entry is within the byte and pixel limits and really an image (else noted)."""
    if info.file_size > settings.max_image_bytes:
        skipped.append(f"{info.filename}: {info.file_size} bytes, limit {settings.max_image_bytes}")
        return False
    try:
        with zf.open(info) as member:
            kind = sniff(member.read(16))
            if kind not in IMAGE_TYPES:
                skipped.append(f"{info.filename}: not a PNG, JPEG or WebP image")
                return False
            member.seek(0)
            check_image_header(member, kind, settings, what=info.filename)
    except InputRejected as exc:
        skipped.append(exc.detail or f"{info.filename}: {exc}")
        return False
    except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError) as exc:
        skipped.append(f"{info.filename}: {exc}")
        return False
    return True


def inspect(f: IO[bytes], size: int, settings: Settings, *, inspect_entries: bool = True) -> Inspected:
    """Check a seekable file of ``size`` bytes against the limits; raise an :class:`InputRejected` if it fails."""
    if size <= 0:
        raise EmptyInput("the file is empty")
    f.seek(0)
    kind = sniff(f.read(16))
    if kind is None:
        raise unsupported("not a PNG, JPEG or WebP image, or a zip archive")
    if kind == ZIP_TYPE:
        if size > settings.max_archive_bytes:
            limit = settings.max_archive_bytes
            raise TooLarge(f"archive of {size} bytes, limit {limit}", limit=limit)
        entries, total = check_archive(f, size, settings, inspect_entries)
        return Inspected("archive", ZIP_TYPE, size, entries=entries, uncompressed_bytes=total)
    if size > settings.max_image_bytes:
        raise TooLarge(f"image of {size} bytes, limit {settings.max_image_bytes}", limit=settings.max_image_bytes)
    f.seek(0)
    width, height = check_image_header(f, kind, settings)
    return Inspected("image", kind, size, width=width, height=height)


def sha256_file(f: IO[bytes], chunk: int = 1024 * 1024) -> str:
    h = hashlib.sha256()
    f.seek(0)
    for block in iter(lambda: f.read(chunk), b""):
        h.update(block)
    f.seek(0)
    return h.hexdigest()
