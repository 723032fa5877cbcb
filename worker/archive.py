"""Zip archives in and out, safely: entry checks, capped reads, the result zip and its reports.

Reading (:func:`scan` then :func:`read_entry`), every problem is a per-entry error, never a job failure:

* unsafe names: absolute paths, drive letters, ``..`` components, control characters;
* symbolic links (Unix mode in ``external_attr``), encrypted entries, unknown compression methods;
* duplicate names (the first one is kept);
* overlapping entries: two entries whose local header + data ranges overlap (the "better zip bomb",
  which this CPython's ``zipfile`` does not detect), or data running past the central directory;
* sizes: a declared size over ``max_image_bytes`` is refused before anything is decompressed; while
  reading, no more than the declared size (and never more than the cap) is decompressed, and an entry
  that does not end where it says (CRC mismatch) is refused; the total is capped at
  ``max_archive_uncompressed_bytes``;
* content: magic bytes must say PNG, JPEG or WebP, and the header's pixel count must be within
  ``max_image_pixels`` (:func:`service.validation.check_image_header`), before any decoding.

Directories, ``__MACOSX/`` and dot files are skipped silently.

Writing (:class:`ResultZip`): a zip built in a temporary file (memory stays flat in the archive's
size), photos stored uncompressed (PNG/JPEG/WebP are compressed already), plus ``report.json`` and
``report.csv`` with every entry's metrics or error.
"""

from __future__ import annotations

import csv
import io
import json
import stat
import struct
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from service.config import Settings
from service.errors import InputRejected
from service.validation import IMAGE_TYPES, ZIP_METHODS, check_image_header, sniff

_LOCAL_HEADER = b"PK\x03\x04"
_CHUNK = 1 << 20


class EntryRejected(ValueError):
    """One archive entry cannot be used; the message goes into the report."""


@dataclass
class EntryResult:
    """One entry's fate, as kept in Redis and written to report.json/report.csv."""

    index: int
    name: str
    status: str  # "ok" | "error"
    error: str | None = None
    output: str | None = None  # path inside the result zip
    key: str | None = None  # where the protected photo waits in S3 until packing
    size: int | None = None
    report: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> EntryResult:
        return cls(**json.loads(text))


@dataclass
class Candidate:
    """An entry that passed the directory checks; its bytes are read with :func:`read_entry`."""

    index: int
    name: str
    info: zipfile.ZipInfo


@dataclass
class Scan:
    candidates: list[Candidate] = field(default_factory=list)
    errors: list[EntryResult] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.candidates) + len(self.errors)


def normalize(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def name_problem(name: str) -> str | None:
    """Why an entry name is unsafe to use as a path, or None."""
    if not name:
        return "empty name"
    if len(name) > 1024:
        return "name longer than 1024 characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "control characters in the name"
    if name.startswith("/"):
        return "absolute path"
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        return "absolute path (drive letter)"
    if ".." in name.split("/"):
        return "path escapes the archive (..)"
    return None


def is_skipped(name: str, info: zipfile.ZipInfo) -> bool:
    """Entries dropped silently: directories, macOS resource forks and dot files."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return info.is_dir() or name.endswith("/") or name.startswith("__MACOSX/") or base.startswith(".")


def is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def local_ranges(fp: IO[bytes], infos: Sequence[zipfile.ZipInfo], data_end: int) -> dict[int, tuple[int, int] | str]:
    """Each entry's byte range (local header + compressed data), or why it has none."""
    out: dict[int, tuple[int, int] | str] = {}
    for i, info in enumerate(infos):
        start = info.header_offset
        if start < 0 or start + 30 > data_end:
            out[i] = "local header outside the archive"
            continue
        fp.seek(start)
        head = fp.read(30)
        if len(head) < 30 or head[:4] != _LOCAL_HEADER:
            out[i] = "bad local header"
            continue
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        end = start + 30 + name_len + extra_len + info.compress_size
        if end > data_end:
            out[i] = "entry data runs past the end of the archive (truncated or bogus sizes)"
            continue
        out[i] = (start, end)
    return out


def overlapping(ranges: dict[int, tuple[int, int] | str]) -> set[int]:
    """Indices of entries whose ranges overlap another entry's (sweep over the sorted starts)."""
    spans = sorted((r[0], r[1], i) for i, r in ranges.items() if isinstance(r, tuple))
    hits: set[int] = set()
    reach, owner = -1, -1
    for start, end, i in spans:
        if start < reach:
            hits.update((i, owner))
        if end > reach:
            reach, owner = end, i
    return hits


def scan(zf: zipfile.ZipFile, fp: IO[bytes], settings: Settings) -> Scan:
    """Check every entry of the central directory; raise :class:`EntryRejected` for a whole-archive limit."""
    infos = zf.infolist()
    if len(infos) > settings.max_archive_entries:
        raise EntryRejected(f"the archive has {len(infos)} entries, limit {settings.max_archive_entries}")
    data_end = int(getattr(zf, "start_dir", 0)) or _size(fp)
    ranges = local_ranges(fp, infos, data_end)
    overlaps = overlapping(ranges)
    result = Scan()
    seen: set[str] = set()
    declared = 0
    for i, info in enumerate(infos):
        name = normalize(info.filename)
        if is_skipped(name, info) and name_problem(name) is None:
            continue

        def reject(reason: str, index: int = i, entry: str = name) -> None:
            result.errors.append(EntryResult(index, entry, "error", reason))

        problem = name_problem(name)
        if problem:
            reject(f"unsafe path: {problem}")
            continue
        if is_symlink(info):
            reject("symbolic link")
            continue
        if name in seen:
            reject("duplicate name (the first entry of that name was used)")
            continue
        seen.add(name)
        if info.flag_bits & 0x1:
            reject("encrypted entry")
            continue
        if info.compress_type not in ZIP_METHODS:
            reject(f"unsupported compression method {info.compress_type}")
            continue
        where = ranges.get(i)
        if isinstance(where, str):
            reject(where)
            continue
        if i in overlaps:
            reject("entry overlaps another entry's data (overlapped zip bomb)")
            continue
        if info.file_size > settings.max_image_bytes:
            reject(f"declared {info.file_size} bytes uncompressed, limit {settings.max_image_bytes}")
            continue
        declared += info.file_size
        if declared > settings.max_archive_uncompressed_bytes:
            reject(f"the archive expands beyond {settings.max_archive_uncompressed_bytes} bytes")
            continue
        result.candidates.append(Candidate(i, name, info))
    return result


def _size(fp: IO[bytes]) -> int:
    fp.seek(0, io.SEEK_END)
    return fp.tell()


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes:
    """The entry's bytes: refused when declared over ``cap``; never more than the declared size is
    decompressed, and an entry whose data does not match its declared size and CRC is refused."""
    if info.file_size > cap:
        raise EntryRejected(f"declared {info.file_size} bytes uncompressed, limit {cap}")
    limit = info.file_size
    chunks: list[bytes] = []
    total = 0
    try:
        with zf.open(info) as member:
            while True:
                block = member.read(min(_CHUNK, limit + 1 - total))
                if not block:
                    break
                total += len(block)
                if total > limit:
                    raise EntryRejected(f"expands beyond its declared size of {info.file_size} bytes")
                chunks.append(block)
    except EntryRejected:
        raise
    except zipfile.BadZipFile as exc:
        raise EntryRejected(f"corrupt entry ({exc}: bigger than declared, or damaged)") from None
    except Exception as exc:  # zlib.error, lzma/bz2 errors, EOFError, NotImplementedError, RuntimeError
        raise EntryRejected(f"cannot decompress: {type(exc).__name__}: {exc}") from None
    if total != limit:
        raise EntryRejected(f"shorter than its declared size ({total} of {info.file_size} bytes)")
    return b"".join(chunks)


def check_photo(data: bytes, settings: Settings, name: str) -> str:
    """The photo's media type from its magic bytes, after checking its header's pixel count."""
    kind = sniff(data[:16])
    if kind not in IMAGE_TYPES:
        raise EntryRejected("not an image (expected PNG, JPEG or WebP content)")
    try:
        check_image_header(io.BytesIO(data), kind, settings, what=name)
    except InputRejected as exc:
        raise EntryRejected(exc.detail or "unreadable image header") from None
    return kind


# ---- the result -----------------------------------------------------------------------------------

CSV_FIELDS = (
    "index", "name", "status", "error", "output", "width", "height", "psnr", "ssim", "lpips", "linf",
    "max_change_levels", "changed_share", "within_budget", "seconds",
)
FORGER_FIELDS = ("success_rate", "distortion", "nullification")
RECEIPT_FIELDS = ("min_success_rate", "weakest", "min_edit_blocked")


def output_name(name: str, ext: str, index: int, taken: set[str]) -> str:
    """The protected photo's path in the result zip: same folders and stem, the output format's extension."""
    folder, _, base = name.rpartition("/")
    stem = base.rsplit(".", 1)[0] if "." in base else base
    stem = stem or f"photo-{index}"
    prefix = f"{folder}/" if folder else ""
    candidate = f"{prefix}{stem}{ext}"
    if candidate.lower() in taken or candidate in ("report.json", "report.csv"):
        candidate = f"{prefix}{stem}-{index}{ext}"
    taken.add(candidate.lower())
    return candidate


def report_document(job: dict[str, Any], results: Sequence[EntryResult]) -> dict[str, Any]:
    ok = sum(1 for r in results if r.status == "ok")
    photos = []
    for r in results:
        item: dict[str, Any] = {"index": r.index, "name": r.name, "status": r.status}
        if r.status == "ok":
            item["output"] = r.output
            item.update(r.report or {})
        else:
            item["error"] = r.error
        photos.append(item)
    return {
        **job,
        "summary": {"entries": len(results), "protected": ok, "errors": len(results) - ok},
        "photos": photos,
    }


def report_csv(results: Sequence[EntryResult]) -> str:
    forgers = sorted({f for r in results for f in ((r.report or {}).get("forgers") or {})})
    conditions = list(dict.fromkeys(c for r in results for c in (((r.report or {}).get("receipt") or {})
                                                                 .get("conditions") or {})))
    columns = [*CSV_FIELDS, *(f"{f}_{k}" for f in forgers for k in FORGER_FIELDS),
               *(f"receipt_{c}" for c in conditions), *RECEIPT_FIELDS, "verdict"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in results:
        rep = r.report or {}
        row: dict[str, Any] = {
            "index": r.index, "name": r.name, "status": r.status, "error": r.error or "", "output": r.output or "",
        }
        for key in CSV_FIELDS[5:]:
            row[key] = rep.get(key, "")
        for f in forgers:
            for k in FORGER_FIELDS:
                row[f"{f}_{k}"] = ((rep.get("forgers") or {}).get(f) or {}).get(k, "")
        receipt = rep.get("receipt") or {}
        for c in conditions:  # the receipt: success rate per condition, and the weakest
            row[f"receipt_{c}"] = ((receipt.get("conditions") or {}).get(c) or {}).get("success_rate", "")
        for k in RECEIPT_FIELDS:
            row[k] = receipt.get(k, "")
        row["verdict"] = (receipt.get("verdict") or {}).get("level", "")  # the text is in report.json
        writer.writerow(row)
    return buf.getvalue()


class ResultZip:
    """The result archive, written entry by entry into a (temporary) file."""

    def __init__(self, fileobj: IO[bytes]) -> None:
        self.fileobj = fileobj
        self.zf = zipfile.ZipFile(fileobj, "w", zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, data: bytes, compress: bool = False) -> None:
        info = zipfile.ZipInfo(name, date_time=(2000, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
        info.external_attr = 0o644 << 16
        self.zf.writestr(info, data)

    def close(self) -> None:
        self.zf.close()


def iter_sorted(raw: Iterable[str]) -> list[EntryResult]:
    return sorted((EntryResult.from_json(x) for x in raw), key=lambda r: r.index)
