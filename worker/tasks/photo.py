"""``veil.protect`` (gpu): one photo, protected and written to ``<output_prefix><stem><ext>``."""

from __future__ import annotations

from typing import Any

from celery import Task

from core.report import JobReport, validated
from service.contract import OutputRef, TaskPayload
from service.queue import TASK_PROTECT
from service.storage import safe_filename
from worker import models
from worker.celery_app import app, settings
from worker.context import Context, get_context
from worker.tasks.protocol import (
    JobError,
    begin,
    build_protection,
    emit,
    ext_and_type,
    job_errors,
    prelude,
    read_object,
    run_protect,
)

# ---- one photo ---------------------------------------------------------------------------------------


@app.task(name=TASK_PROTECT, bind=True, max_retries=None)
def protect(self: Task, payload: dict[str, Any]) -> str:
    """``veil.protect``: read the photo, protect it, write ``<output_prefix><stem>.png``, complete the job."""
    ctx = get_context()
    ready = prelude(ctx, payload, "protect")
    if ready is None:
        return "skipped"
    p, job = ready
    started = begin(ctx, job, total=1)
    if started is None:
        return "canceled"
    with job_errors(self, ctx, job.id, "protect"):
        return protect_photo(ctx, p)
    return "failed"


def protect_photo(ctx: Context, p: TaskPayload) -> str:
    ext, ctype = ext_and_type(p.output_format)
    data = read_object(ctx, p.input.key, settings.max_image_bytes, "input photo", p.input.etag)
    if ctx.store.is_canceled(p.job_id):
        return "canceled"
    try:
        image = models.decode(data, settings.max_image_pixels)
    except models.BadPhoto as exc:
        raise JobError("invalid_image", f"{p.input.filename}: {exc}") from None
    protection = build_protection(p)
    try:
        [result] = run_protect(p, protection, [image], previews=p.previews)
    except models.BadOptions as exc:
        raise JobError("invalid_options", str(exc)) from None
    if ctx.store.is_canceled(p.job_id):
        return "canceled"
    if result.error:
        raise JobError("min_success_not_met", f"{p.input.filename}: {result.error}")
    key = output_key(p, ext)
    ctx.storage.put_bytes(key, result.data, ctype)
    name = key[len(p.output_prefix) :]
    entry = {"index": 0, "name": p.input.filename, "status": "ok", "output": name, **result.report}
    outputs = [OutputRef(key=key, size=len(result.data), content_type=ctype, source=p.input.filename)]
    if result.previews:
        entry["previews"] = {**entry.get("previews", {}), **put_previews(ctx, p, name, result.previews, outputs)}
    report = validated(JobReport, {"summary": {"entries": 1, "protected": 1, "errors": 0}, "photos": [entry]})
    ctx.store.set_progress(p.job_id, 1)
    if not ctx.store.succeed(p.job_id, outputs, report):
        return "canceled"
    emit(ctx, ctx.store.get(p.job_id), "job.completed")
    return "succeeded"


def put_previews(
    ctx: Context, p: TaskPayload, name: str, previews: dict[str, bytes], outputs: list[OutputRef]
) -> dict[str, str]:
    """Write ``previews/<stem>-<kind>.png`` next to the output (deterministic keys); their names by kind."""
    stem = name.rsplit(".", 1)[0]
    names = {}
    for kind, data in sorted(previews.items()):
        names[kind] = f"previews/{stem}-{kind}.png"
        key = f"{p.output_prefix}{names[kind]}"
        ctx.storage.put_bytes(key, data, "image/png")
        outputs.append(OutputRef(key=key, size=len(data), content_type="image/png", source=p.input.filename))
    return names


def output_key(p: TaskPayload, ext: str) -> str:
    """The photo job's output: ``<output_prefix><input stem><ext>`` (deterministic)."""
    name = safe_filename(p.input.filename, default="photo")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{p.output_prefix}{stem or 'photo'}{ext}"
