"""The report contract (core/report.py): every report field the page (api/static/app.js) reads is declared,
the job view types its report by it, and reports are checked against it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from core.report import (
    ConditionResult,
    ForgerNumbers,
    JobReport,
    PhotoEntry,
    PhotoReport,
    Previews,
    Receipt,
    Summary,
    Verdict,
    validated,
)

APP_JS = Path(__file__).resolve().parent.parent / "api" / "static" / "app.js"

# (function of app.js, what it reads: a regex whose group is a field name, the model that must declare it)
READS: list[tuple[str, str, type[BaseModel]]] = [
    ("showPhoto", r"\bphoto\.(\w+)", PhotoEntry),
    ("showMetrics", r"\bphoto\.(\w+)", PhotoEntry),
    ("showMetrics", r"\breceipt\.(\w+)", Receipt),
    ("showConditions", r"\breceipt\??\.(\w+)", Receipt),
    ("showConditions", r"\bconditions\[c\]\?\.(\w+)", ConditionResult),
    ("showConditions", r"\bforgers\?\.\[f\]\?\.(\w+)", ForgerNumbers),
    ("showForgers", r"\bf\.(\w+)", ForgerNumbers),
    ("showPreviews", r"\bpreviews\.(\w+)", Previews),
    ("showVerdict", r"\bverdict\??\.(\w+)", Verdict),
    ("showPhoto", r"\breceipt\?\.(\w+)", Receipt),
    ("showArchive", r"\bsummary\.(\w+)", Summary),
    ("showPhoto", r"\bjob\.report\?\.(\w+)", JobReport),
    ("showArchive", r"\bjob\.report\?\.(\w+)", JobReport),
]


def function_body(source: str, name: str) -> str:
    """The text of ``function name(...) { ... }`` (braces matched; app.js has no braces in its strings that
    would unbalance them)."""
    start = source.index(f"function {name}(")
    depth, i = 0, source.index("{", start)
    for j in range(i, len(source)):
        depth += {"{": 1, "}": -1}.get(source[j], 0)
        if depth == 0:
            return source[i : j + 1]
    raise AssertionError(f"unbalanced braces in {name}")


def undeclared_reads(source: str) -> list[str]:
    problems = []
    for function, pattern, model in READS:
        names = set(re.findall(pattern, function_body(source, function)))
        if not names:
            problems.append(f"{function}: no read matches {pattern} (the page changed: update READS)")
        problems += [f"{function} reads {model.__name__}.{n}, which the schema lacks"
                     for n in sorted(names - set(model.model_fields))]
    return problems


def test_the_page_reads_only_fields_the_report_schema_declares() -> None:
    assert undeclared_reads(APP_JS.read_text(encoding="utf-8")) == []


def test_the_check_sees_an_undeclared_field() -> None:
    source = APP_JS.read_text(encoding="utf-8").replace("photo.ssim", "photo.sharpness", 1)
    assert undeclared_reads(source) == ["showMetrics reads PhotoEntry.sharpness, which the schema lacks"]


def report(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "width": 64, "height": 48, "seconds": 0.5, "protection": "faces", "faces_found": 1, "detector": "haar",
        "psnr": 40.0, "ssim": 0.99, "lpips": 0.01, "lpips_available": True, "linf": 0.03, "within_budget": True,
        "lossy_output": False,
        "faces": [{"box": [1.0, 2.0, 30.0, 30.0], "score": 0.9, "angle": 0.0, "within_budget": True,
                   "success_rate": 0.5, "forgers": {"stargan": {"success_rate": 0.5, "distortion": 0.1,
                                                                "nullification": 0.2}},
                   "region": [0, 0, 40, 40], "psnr": 40.0, "ssim": 0.99, "lpips": 0.01}],
        "forgers": {"stargan": {"success_rate": 0.5, "distortion": 0.1, "nullification": 0.2}},
        "receipt": {"conditions": {"clean": {"success_rate": 0.5, "forgers": {}}}, "min_success_rate": 0.5,
                    "weakest": "clean", "threshold": 0.05, "scope": "faces"},
        "report_seconds": 0.1,
    }
    base.update(changes)
    return base


def test_a_report_keeps_the_keys_it_was_built_with() -> None:
    built = report()
    assert validated(PhotoReport, built) == built  # no `faces_skipped`, `note`, `landmarks`... added as null
    assert "faces_skipped" in validated(PhotoReport, report(faces_skipped=2))


def test_reports_outside_the_contract_are_refused() -> None:
    with pytest.raises(ValidationError, match="sharpness"):
        validated(PhotoReport, report(sharpness=1.0))
    with pytest.raises(ValidationError, match="protection"):
        validated(PhotoReport, report(protection="some"))
    with pytest.raises(ValidationError, match="width"):
        validated(PhotoReport, {k: v for k, v in report().items() if k != "width"})


def test_lpips_is_a_number_or_none_with_a_flag() -> None:
    """Older reports said "unavailable"; they read as None with lpips_available False."""
    old = validated(PhotoReport, report(lpips="unavailable"))
    assert old["lpips"] is None and old["lpips_available"] is False
    legacy = {k: v for k, v in report(lpips="unavailable").items() if k != "lpips_available"}
    assert validated(PhotoReport, legacy)["lpips_available"] is False


def test_job_reports_of_photos_and_archives() -> None:
    entry = {"index": 0, "name": "face.png", "status": "ok", "output": "face.png", **report(),
             "min_success": {"required": 0.5, "met": True, "attempts": 1, "core_eps": 0.05}}
    photo_job = {"summary": {"entries": 1, "protected": 1, "errors": 0}, "photos": [entry]}
    assert validated(JobReport, photo_job) == photo_job
    archive = {"summary": {"entries": 2, "protected": 1, "errors": 1}, "files": ["a.zip", "report.json"]}
    assert validated(JobReport, archive) == archive
    cli = {"summary": {"entries": 1, "protected": 0, "errors": 1},
           "photos": [{"name": "b.png", "input": "in/b.png", "error": "not an image"}]}
    assert validated(JobReport, cli) == cli


def test_the_job_view_types_its_report() -> None:
    from service.views import Job

    schema = Job.model_json_schema(mode="serialization")
    assert {"$ref": "#/$defs/JobReport"} in schema["properties"]["report"]["anyOf"]
    assert {"JobReport", "PhotoEntry", "FaceReport", "Receipt", "ConditionResult", "ForgerNumbers"} <= set(
        schema["$defs"])
