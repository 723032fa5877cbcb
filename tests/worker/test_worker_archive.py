"""worker.archive in process: entry checks, capped reads, overlap detection, names and reports."""

from __future__ import annotations

import csv
import io
import json
import warnings
import zipfile

import pytest
from workertest import ZipSpec, central_records, face_png, lie_about_size, overlap_entries, symlink_info

from service.config import Settings
from worker import archive as arc

SETTINGS = Settings(max_image_bytes=256 * 1024, max_image_pixels=100_000, max_archive_entries=20,
                    max_archive_uncompressed_bytes=1024 * 1024)


def scan(data: bytes, settings: Settings = SETTINGS) -> arc.Scan:
    fp = io.BytesIO(data)
    with zipfile.ZipFile(fp) as zf:
        return arc.scan(zf, fp, settings)


def errors(result: arc.Scan) -> dict[str, str]:
    return {e.name: e.error or "" for e in result.errors}


def test_good_entries_pass_and_junk_is_skipped() -> None:
    data = (ZipSpec().add("a.png", face_png(seed=1)).add("dir/b.jpg", face_png(fmt="JPEG"))
            .add("dir/", b"").add("__MACOSX/._a.png", b"x").add(".DS_Store", b"x").build())
    result = scan(data)
    assert [c.name for c in result.candidates] == ["a.png", "dir/b.jpg"] and result.errors == []
    assert result.total == 2


@pytest.mark.parametrize(
    ("name", "reason"),
    [("../evil.png", "escapes"), ("a/../../evil.png", "escapes"), ("/etc/evil.png", "absolute"),
     ("C:/evil.png", "drive letter"), ("..\\evil.png", "escapes"), ("bad\x01.png", "control")],
)
def test_unsafe_names(name: str, reason: str) -> None:
    result = scan(ZipSpec().add(name, face_png()).add("ok.png", face_png()).build())
    [err] = result.errors
    assert reason in (err.error or "") and [c.name for c in result.candidates] == ["ok.png"]


def patch_central(data: bytes, name: str, offset: int, value: int) -> bytes:
    """Set a 2-byte field of ``name``'s central directory record (8: flags, 10: compression method)."""
    buf = bytearray(data)
    for pos, entry in central_records(data):
        if entry == name:
            buf[pos + offset : pos + offset + 2] = value.to_bytes(2, "little")
    return bytes(buf)


def test_symlinks_duplicates_encryption_and_compression() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicate name
        data = (ZipSpec().add(symlink_info("link.png"), b"/etc/passwd").add("x.png", face_png())
                .add("x.png", face_png(seed=2)).add("locked.png", b"secret").add("odd.png", face_png()).build())
    data = patch_central(data, "locked.png", 8, 0x1)  # encrypted
    data = patch_central(data, "odd.png", 10, 99)  # AES, not supported
    result = scan(data)
    found = errors(result)
    assert found["link.png"] == "symbolic link"
    assert "duplicate" in found["x.png"] and [c.name for c in result.candidates] == ["x.png"]
    assert found["locked.png"] == "encrypted entry"
    assert "compression method 99" in found["odd.png"]


def test_overlapping_entries_are_detected() -> None:
    data = ZipSpec().add("a.png", face_png(seed=1)).add("b.png", face_png(seed=2)).add("c.png", face_png()).build()
    result = scan(overlap_entries(data, "b.png", "a.png"))
    found = errors(result)
    assert set(found) == {"a.png", "b.png"} and all("overlap" in v for v in found.values())
    assert [c.name for c in result.candidates] == ["c.png"]


def test_overlap_sweep() -> None:
    ranges: dict[int, tuple[int, int] | str] = {0: (0, 100), 1: (100, 150), 2: (120, 130), 3: (200, 210), 4: "bad"}
    assert arc.overlapping(ranges) == {1, 2}


def test_declared_sizes_are_capped_before_reading() -> None:
    big = bytes(300 * 1024)  # declared 300 KiB > 256 KiB limit
    result = scan(ZipSpec().add("big.png", big).build())
    assert "limit" in errors(result)["big.png"]
    many = ZipSpec()
    for i in range(5):
        many.add(f"p{i}.png", bytes(250 * 1024))
    result = scan(many.build())
    assert len(result.candidates) == 4 and "expands beyond" in errors(result)["p4.png"]
    too_many = ZipSpec()
    for i in range(21):
        too_many.add(f"{i}.png", b"x")
    with pytest.raises(arc.EntryRejected, match="21 entries"):
        scan(too_many.build())


def test_an_entry_bigger_than_declared_is_refused() -> None:
    data = lie_about_size(ZipSpec().add("bomb.png", bytes(200 * 1024)).build(), "bomb.png", 100)
    fp = io.BytesIO(data)
    with zipfile.ZipFile(fp) as zf:
        [cand] = arc.scan(zf, fp, SETTINGS).candidates
        with pytest.raises(arc.EntryRejected, match="bigger than declared"):
            arc.read_entry(zf, cand.info, SETTINGS.max_image_bytes)


def test_read_entry_and_check_photo() -> None:
    photo = face_png(40, 30)
    data = ZipSpec().add("p.png", photo).add("t.png", b"hello").add("huge.png", face_png(400, 300)).build()
    fp = io.BytesIO(data)
    with zipfile.ZipFile(fp) as zf:
        p, t, huge = arc.scan(zf, fp, SETTINGS).candidates
        assert arc.read_entry(zf, p.info, 1 << 20) == photo
        assert arc.check_photo(photo, SETTINGS, "p.png") == "image/png"
        with pytest.raises(arc.EntryRejected, match="not an image"):
            arc.check_photo(arc.read_entry(zf, t.info, 1 << 20), SETTINGS, "t.png")
        with pytest.raises(arc.EntryRejected, match="pixels"):
            arc.check_photo(arc.read_entry(zf, huge.info, 1 << 20), SETTINGS, "huge.png")
        with pytest.raises(arc.EntryRejected, match="limit 10"):
            arc.read_entry(zf, p.info, 10)


def test_output_names_keep_folders_and_never_collide() -> None:
    taken: set[str] = set()
    assert arc.output_name("a/b/face.jpg", ".png", 0, taken) == "a/b/face.png"
    assert arc.output_name("a/b/face.png", ".png", 1, taken) == "a/b/face-1.png"
    assert arc.output_name("report.json", ".png", 2, taken) == "report.png"
    assert arc.output_name("noext", ".png", 3, taken) == "noext.png"


def test_reports() -> None:
    rep = {"width": 4, "height": 3, "psnr": 40.0, "ssim": 0.9, "lpips": 0.1, "linf": 0.05, "within_budget": True,
           "seconds": 0.2, "forgers": {"stargan": {"success_rate": 0.2, "distortion": 0.3, "nullification": 0.4}},
           "receipt": {"conditions": {"clean": {"success_rate": 0.2}, "jpeg75": {"success_rate": 0.1}},
                       "min_success_rate": 0.1, "weakest": "jpeg75", "min_edit_blocked": 0.0,
                       "verdict": {"level": "not_protected", "text": "Not protected ..."}},
           "max_change_levels": 6, "changed_share": 0.25}
    results = [arc.EntryResult(0, "a.jpg", "ok", output="a.png", key="k", size=10, report=rep),
               arc.EntryResult(1, "b.txt", "error", "not an image")]
    assert arc.EntryResult.from_json(results[0].to_json()) == results[0]
    doc = arc.report_document({"job_id": "j"}, results)
    assert doc["summary"] == {"entries": 2, "protected": 1, "errors": 1}
    assert doc["photos"][0]["psnr"] == 40.0 and doc["photos"][1]["error"] == "not an image"
    json.dumps(doc)
    rows = list(csv.DictReader(io.StringIO(arc.report_csv(results))))
    assert rows[0]["stargan_success_rate"] == "0.2" and rows[0]["output"] == "a.png"
    assert rows[1]["error"] == "not an image" and rows[1]["psnr"] == ""
    assert (rows[0]["receipt_clean"], rows[0]["receipt_jpeg75"], rows[0]["min_success_rate"], rows[0]["weakest"]) == (
        "0.2", "0.1", "0.1", "jpeg75")
    assert rows[1]["receipt_jpeg75"] == "" and rows[1]["weakest"] == ""
    # the verdict's level and the change in a user's units, beside the numbers
    first = rows[0]
    assert (first["verdict"], first["min_edit_blocked"], first["max_change_levels"], first["changed_share"]) == (
        "not_protected", "0.0", "6", "0.25")
    assert rows[1]["verdict"] == ""
