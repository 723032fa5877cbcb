"""Archive jobs: ``veil.protect_archive`` (io), ``veil.protect_group`` (gpu), ``veil.pack_archive`` (io).

Archives: ``veil.protect_archive`` (io) downloads the zip to a temporary file, checks every entry
(:mod:`worker.archive`), stores the good photos under ``tenants/<t>/work/<job>/in/`` and sends groups of
``VEIL_ARCHIVE_GROUP_SIZE`` photos to ``veil.protect_group`` (gpu). Each group writes its protected photos
under ``.../work/<job>/out/`` and its entries' results to ``<prefix>job:<id>:results``, then adds its
number to ``<prefix>job:<id>:groups_done`` (a set: a redelivered group counts once); the group that
completes the set sends ``veil.pack_archive`` (io), which streams the result zip (a temporary file, then
a multipart upload) with report.json and report.csv, completes the job and removes the work objects.
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from celery import Task

from core.report import JobReport, WorkerPhotoReport, validated
from service.contract import OutputRef, TaskPayload
from service.jobs import JobRecord
from service.queue import TASK_PACK_ARCHIVE, TASK_PROTECT_ARCHIVE, TASK_PROTECT_GROUP
from service.states import JobStatus
from service.storage import StorageError, is_changed, is_missing, safe_filename
from worker import archive as arc
from worker import models
from worker.celery_app import app, settings
from worker.context import Context, get_context
from worker.tasks.protocol import (
    JobError,
    begin,
    build_protection,
    count_delivery,
    emit,
    ext_and_type,
    fail_job,
    job_errors,
    job_ttl,
    maybe_progress,
    parse_payload,
    prelude,
    read_object,
    run_protect,
    work_prefix,
)

log = logging.getLogger(__name__)

# ---- archives: expand and fan out ------------------------------------------------------------------------


@dataclass
class GroupItem:
    index: int
    name: str
    key: str


@app.task(name=TASK_PROTECT_ARCHIVE, bind=True, max_retries=None)
def protect_archive(self: Task, payload: dict[str, Any]) -> str:
    """``veil.protect_archive``: check and extract the entries, send the photo groups."""
    ctx = get_context()
    ready = prelude(ctx, payload, "archive")
    if ready is None:
        return "skipped"
    p, job = ready
    started = begin(ctx, job, total=job.progress_total)
    if started is None:
        return "canceled"
    with job_errors(self, ctx, job.id, "archive"):
        return expand(ctx, p)
    return "failed"


def download(ctx: Context, key: str, fh: Any, etag: str | None = None) -> None:
    """The object into ``fh`` (the version ``etag`` only, when given: the one the gateway checked)."""
    try:
        ctx.storage.client.download_fileobj(ctx.storage.bucket, key, fh, ExtraArgs={"IfMatch": etag} if etag else None)
    except ClientError as exc:
        if is_changed(exc):
            raise JobError("input_changed", "the archive was replaced after it was checked; upload it again") from None
        if is_missing(exc):
            raise JobError("input_missing", "the archive is no longer in storage (expired or deleted)") from None
        raise StorageError(f"cannot read {key}: {exc}") from exc
    fh.flush()
    fh.seek(0)


def expand(ctx: Context, p: TaskPayload) -> str:
    info = ctx.storage.head(p.input.key)
    if info is None:
        raise JobError("input_missing", "the archive is no longer in storage (expired or deleted)")
    if info.size > settings.max_archive_bytes:
        raise JobError("input_too_large", f"the archive has {info.size} bytes, limit {settings.max_archive_bytes}")
    results: dict[int, arc.EntryResult] = {}
    items: list[GroupItem] = []
    with tempfile.TemporaryFile(dir=settings.worker_tmp_dir) as fh:
        download(ctx, p.input.key, fh, p.input.etag)
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise JobError("invalid_archive", f"not a valid zip archive: {exc}") from None
        with zf:
            try:
                scan = arc.scan(zf, fh, settings)
            except arc.EntryRejected as exc:
                raise JobError("invalid_archive", str(exc)) from None
            for err in scan.errors:
                results[err.index] = err
            expanded = 0
            for n, cand in enumerate(scan.candidates):
                if n % 16 == 0 and ctx.store.is_canceled(p.job_id):
                    return "canceled"
                try:
                    data = arc.read_entry(zf, cand.info, settings.max_image_bytes)
                    expanded += len(data)
                    if expanded > settings.max_archive_uncompressed_bytes:
                        raise arc.EntryRejected(
                            f"the archive expands beyond {settings.max_archive_uncompressed_bytes} bytes"
                        )
                    ctype = arc.check_photo(data, settings, cand.name)
                except arc.EntryRejected as exc:
                    results[cand.index] = arc.EntryResult(cand.index, cand.name, "error", str(exc))
                    continue
                key = f"{work_prefix(p)}in/{cand.index:06d}"
                ctx.storage.put_bytes(key, data, ctype)
                items.append(GroupItem(cand.index, cand.name, key))
    size = settings.archive_group_size
    groups = [items[i : i + size] for i in range(0, len(items), size)]
    ttl = job_ttl(ctx, p.job_id)
    keys = ctx.keys
    with ctx.redis.pipeline(transaction=True) as pipe:
        if results:
            pipe.hset(keys.results(p.job_id), mapping={str(i): r.to_json() for i, r in results.items()})
        pipe.hset(keys.archive(p.job_id), mapping={"groups": len(groups), "total": scan.total})
        for key in (keys.results(p.job_id), keys.archive(p.job_id)):
            pipe.expire(key, ttl)
        pipe.execute()
    if not ctx.store.set_progress(p.job_id, len(results), total=scan.total):
        return "canceled"
    log.info("job %s: %d entries, %d photos in %d groups, %d errors", p.job_id, scan.total, len(items),
             len(groups), len(results))
    if not groups:
        send_pack(p)
        return "packing"
    base = p.model_dump(mode="json")
    for n, group in enumerate(groups):
        protect_group.apply_async(
            kwargs={
                "payload": {
                    "v": 1,
                    "job": base,
                    "group": n,
                    "groups": len(groups),
                    "items": [{"index": g.index, "name": g.name, "key": g.key} for g in group],
                }
            },
            queue=settings.queue_gpu,
            task_id=f"{p.job_id}-g{n}",
        )
    return f"{len(groups)} groups"


def send_pack(p: TaskPayload) -> None:
    pack_archive.apply_async(
        kwargs={"payload": p.model_dump(mode="json")}, queue=settings.queue_io, task_id=f"{p.job_id}-pack"
    )


# ---- archives: the groups (gpu) --------------------------------------------------------------------------


def batches(items: Sequence[tuple[GroupItem, Any]]) -> Iterator[list[tuple[GroupItem, Any]]]:
    """Decoded photos in batches of at most ``protect_batch_size`` photos and ``protect_batch_pixels``."""
    batch: list[tuple[GroupItem, Any]] = []
    pixels = 0
    for item, image in items:
        w, h = image.size
        if batch and (len(batch) >= settings.protect_batch_size or pixels + w * h > settings.protect_batch_pixels):
            yield batch
            batch, pixels = [], 0
        batch.append((item, image))
        pixels += w * h
    if batch:
        yield batch


def fan_in(ctx: Context, p: TaskPayload, group: int, groups: int) -> bool:
    """Count the group as done; the group that completes the set sends packing. True if it did."""
    key = ctx.keys.groups_done(p.job_id)
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.sadd(key, group)
        pipe.scard(key)
        pipe.expire(key, job_ttl(ctx, p.job_id))
        _added, count, _ = pipe.execute()
    if int(count) >= groups:
        send_pack(p)
        return True
    return False


def record(ctx: Context, job_id: str, results: Sequence[arc.EntryResult]) -> int:
    """Store entries' results; returns how many entries are done."""
    key = ctx.keys.results(job_id)
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={str(r.index): r.to_json() for r in results})
        pipe.hlen(key)
        _, done = pipe.execute()
    return int(done)


@app.task(name=TASK_PROTECT_GROUP, bind=True, max_retries=None)
def protect_group(self: Task, payload: dict[str, Any]) -> str:
    """``veil.protect_group``: protect some of an archive's photos, batch by batch (cancel checked between)."""
    ctx = get_context()
    try:
        p = parse_payload(payload.get("job"))
        group, groups = int(payload["group"]), int(payload["groups"])
        items = [GroupItem(int(i["index"]), str(i["name"]), str(i["key"])) for i in payload["items"]]
    except (JobError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.error("invalid group payload: %s", exc)
        return "invalid"
    job = ctx.store.get(p.job_id)
    if job is None or job.status != JobStatus.RUNNING:
        return "skipped"
    if ctx.redis.sismember(ctx.keys.groups_done(p.job_id), str(group)):
        fan_in(ctx, p, group, groups)  # done before: make sure packing was sent
        return "done before"
    counter = f"group-{group}"
    n = count_delivery(ctx, p.job_id, counter)
    if n > settings.task_max_deliveries:
        reason = f"skipped: the worker stopped {n - 1} times while protecting this photo's group"
        record(ctx, p.job_id, [arc.EntryResult(i.index, i.name, "error", reason) for i in items])
        fan_in(ctx, p, group, groups)
        return "gave up"
    with job_errors(self, ctx, p.job_id, counter):
        if run_group(ctx, p, items) == "canceled":
            return "canceled"
        fan_in(ctx, p, group, groups)
        return "done"
    return "failed"


def run_group(ctx: Context, p: TaskPayload, items: Sequence[GroupItem]) -> str:
    ext, ctype = ext_and_type(p.output_format)
    protection = build_protection(p)
    decoded: list[tuple[GroupItem, Any]] = []
    errors: list[arc.EntryResult] = []
    for item in items:
        try:
            data = read_object(ctx, item.key, settings.max_image_bytes, f"extracted entry {item.name}")
            decoded.append((item, models.decode(data, settings.max_image_pixels)))
        except (models.BadPhoto, JobError) as exc:
            errors.append(arc.EntryResult(item.index, item.name, "error", str(exc)))
    if errors:
        record(ctx, p.job_id, errors)
    for batch in batches(decoded):
        if ctx.store.is_canceled(p.job_id):
            return "canceled"
        done = protect_batch(ctx, p, protection, batch, ext, ctype)
        if not ctx.store.set_progress(p.job_id, done):
            return "canceled"
        maybe_progress(ctx, p.job_id)
    return "done"


def protect_batch(
    ctx: Context, p: TaskPayload, protection: Any, batch: list[tuple[GroupItem, Any]], ext: str, ctype: str
) -> int:
    """Protect one batch (photo by photo if the batch fails as a whole) and record every entry."""
    try:
        outcomes: list[models.PhotoResult | str] = list(run_protect(p, protection, [image for _, image in batch]))
    except (RuntimeError, ValueError) as exc:  # e.g. out of memory on a large batch: one by one
        log.warning("job %s: batch of %d failed (%s); protecting one by one", p.job_id, len(batch), exc)
        outcomes = []
        for _, image in batch:
            try:
                outcomes.append(run_protect(p, protection, [image])[0])
            except (RuntimeError, ValueError) as one_exc:
                outcomes.append(f"protection failed: {one_exc}")
    results = []
    for (item, _), outcome in zip(batch, outcomes, strict=True):
        if isinstance(outcome, str) or outcome.error:
            reason = outcome if isinstance(outcome, str) else outcome.error
            results.append(arc.EntryResult(item.index, item.name, "error", reason))
            continue
        key = f"{work_prefix(p)}out/{item.index:06d}{ext}"
        ctx.storage.put_bytes(key, outcome.data, ctype)
        results.append(
            arc.EntryResult(item.index, item.name, "ok", key=key, size=len(outcome.data),
                            report=validated(WorkerPhotoReport, outcome.report))
        )
    return record(ctx, p.job_id, results)


# ---- archives: pack (io) ----------------------------------------------------------------------------------


@app.task(name=TASK_PACK_ARCHIVE, bind=True, max_retries=None)
def pack_archive(self: Task, payload: dict[str, Any]) -> str:
    """``veil.pack_archive``: the result zip + reports, then succeed (or fail when nothing was protected)."""
    ctx = get_context()
    ready = prelude(ctx, payload, "pack")
    if ready is None:
        return "skipped"
    p, job = ready
    if job.status != JobStatus.RUNNING:
        return "skipped"
    with job_errors(self, ctx, job.id, "pack"):
        return pack(ctx, p, job)
    return "failed"


def pack(ctx: Context, p: TaskPayload, job: JobRecord) -> str:
    ext, _ctype = ext_and_type(p.output_format)
    keys = ctx.keys
    raw: dict[str, str] = ctx.redis.hgetall(keys.results(p.job_id))  # type: ignore[assignment]
    results = arc.iter_sorted(raw.values())
    total = int(ctx.redis.hget(keys.archive(p.job_id), "total") or len(results))
    taken: set[str] = set()
    meta = {
        "job_id": p.job_id,
        "input": p.input.filename,
        "method": p.method,
        "forgers": p.forgers,
        "targets": p.targets,
        "eps": p.eps,
        "output_format": p.output_format,
    }
    stem = safe_filename(p.input.filename, default="archive")
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    zip_key = f"{p.output_prefix}{stem or 'archive'}-protected.zip"
    with tempfile.TemporaryFile(dir=settings.worker_tmp_dir) as fh:
        out = arc.ResultZip(fh)
        for n, r in enumerate(results):
            if n % 32 == 0 and ctx.store.is_canceled(p.job_id):
                return "canceled"
            if r.status != "ok" or not r.key:
                continue
            try:
                data = read_object(ctx, r.key, 1 << 40, f"protected photo {r.name}")
            except JobError as exc:
                r.status, r.error, r.report = "error", str(exc), None
                continue
            r.output = arc.output_name(r.name, ext, r.index, taken)
            out.add(r.output, data)
        document = arc.report_document(meta, results)
        report_json = json.dumps(document, indent=2).encode()
        report_csv = arc.report_csv(results).encode()
        out.add("report.json", report_json, compress=True)
        out.add("report.csv", report_csv, compress=True)
        out.close()
        zip_size = fh.tell()
        ctx.storage.put_fileobj(zip_key, fh, "application/zip")  # multipart above 8 MiB, read from the file
    ctx.storage.put_bytes(f"{p.output_prefix}report.json", report_json, "application/json")
    ctx.storage.put_bytes(f"{p.output_prefix}report.csv", report_csv, "text/csv")
    summary = document["summary"]
    report = validated(JobReport, {"summary": summary,
                                   "files": [zip_key[len(p.output_prefix) :], "report.json", "report.csv"]})
    outputs = [
        OutputRef(key=zip_key, size=zip_size, content_type="application/zip", source=p.input.filename),
        OutputRef(key=f"{p.output_prefix}report.json", size=len(report_json), content_type="application/json"),
        OutputRef(key=f"{p.output_prefix}report.csv", size=len(report_csv), content_type="text/csv"),
    ]
    ctx.store.set_progress(p.job_id, max(total, len(results)))
    if summary["protected"] == 0:
        fail_job(
            ctx, p.job_id, "no_images",
            f"none of the {summary['entries']} entries could be protected; see report.json", report=report,
        )
        ctx.store.set_fields(p.job_id, outputs=outputs)
        outcome = "failed"
    elif ctx.store.succeed(p.job_id, outputs, report):
        emit(ctx, ctx.store.get(p.job_id), "job.completed")
        outcome = "succeeded"
    else:
        return "canceled"
    cleanup(ctx, p)
    return outcome


def cleanup(ctx: Context, p: TaskPayload) -> None:
    """Remove the work objects and the fan-out keys (best effort; the lifecycle rule catches leftovers)."""
    try:
        objects = ctx.storage.list_objects(work_prefix(p))
        for start in range(0, len(objects), 1000):
            chunk = [{"Key": o.key} for o in objects[start : start + 1000]]
            ctx.storage.client.delete_objects(Bucket=ctx.storage.bucket, Delete={"Objects": chunk, "Quiet": True})
    except (StorageError, ClientError, BotoCoreError) as exc:
        log.warning("job %s: work objects not removed: %s", p.job_id, exc)
    ctx.redis.delete(*ctx.keys.all_for(p.job_id))
