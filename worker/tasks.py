"""The Celery tasks: one photo, archives (expand, fan out, fan in, pack) and webhook deliveries.

Every task follows the job protocol of ``api/README.md`` through :class:`service.jobs.JobStore`:

* a job that is missing, terminal or canceled is acknowledged and left alone (a redelivered task of a
  finished job does nothing);
* a redelivered task finds its job ``running`` (its worker died): it requeues it (``running -> queued``)
  and starts it again; a per-job delivery counter in Redis (``VEIL_TASK_MAX_DELIVERIES``) makes a poison
  input that kills its worker every time fail the job (``too_many_attempts``) instead of looping;
* outputs go to deterministic keys (a redelivery overwrites, it never adds a second output), then
  ``succeed`` / ``fail``; a False answer means the job was canceled meanwhile: nothing more is done;
* a bad photo fails a photo job with a clear reason (``invalid_image``); in an archive it is one entry's
  error in report.json/report.csv;
* S3/Redis outages are retried (``VEIL_TASK_TRANSIENT_RETRIES``, exponential backoff), then fail the job;
  any other exception fails the job (``internal_error``): never a crash loop;
* webhooks (``job.started``, ``job.progress`` (throttled), ``job.completed``, ``job.failed``) are sent as
  ``veil.deliver_webhook`` tasks on the io queue with a snapshot of the job.

Archives: ``veil.protect_archive`` (io) downloads the zip to a temporary file, checks every entry
(:mod:`worker.archive`), stores the good photos under ``tenants/<t>/work/<job>/in/`` and sends groups of
``VEIL_ARCHIVE_GROUP_SIZE`` photos to ``veil.protect_group`` (gpu). Each group writes its protected photos
under ``.../work/<job>/out/`` and its entries' results to ``<prefix>job:<id>:results``, then adds its
number to ``<prefix>job:<id>:groups_done`` (a set: a redelivered group counts once); the group that
completes the set sends ``veil.pack_archive`` (io), which streams the result zip (a temporary file, then
a multipart upload) with report.json and report.csv, completes the job and removes the work objects.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import redis
from botocore.exceptions import BotoCoreError, ClientError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from service.contract import PAYLOAD_VERSION, OutputRef, TaskPayload
from service.jobs import JobRecord
from service.keys import get_webhook_secret
from service.redisdb import new_id
from service.states import InvalidTransition, JobStatus
from service.storage import StorageError, is_missing, safe_filename
from service.views import job_out
from service.webhooks import deliver
from worker import archive as arc
from worker import models
from worker.celery_app import TASK_DELIVER_WEBHOOK, TASK_PACK_ARCHIVE, TASK_PROTECT_GROUP, app, settings
from worker.context import Context, get_context

log = logging.getLogger(__name__)

TRANSIENT: tuple[type[Exception], ...] = (
    StorageError,
    redis.ConnectionError,
    redis.TimeoutError,
    BotoCoreError,
)


class JobError(Exception):
    """The job cannot succeed: fail it with this code and message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- helpers ---------------------------------------------------------------------------------------


def parse_payload(payload: Any) -> TaskPayload:
    version = payload.get("v") if isinstance(payload, dict) else None
    if version != PAYLOAD_VERSION:
        raise JobError("invalid_payload", f"unsupported task payload version {version!r}")
    try:
        return TaskPayload.model_validate(payload)
    except ValidationError as exc:
        raise JobError("invalid_payload", f"invalid task payload: {exc.errors()[:3]}") from None


def job_ttl(ctx: Context, job_id: str) -> int:
    ttl = ctx.redis.ttl(ctx.store.keys.job(job_id))
    return int(ttl) if isinstance(ttl, int) and ttl > 0 else 7 * 86400


def count_delivery(ctx: Context, job_id: str, task: str) -> int:
    """This delivery's number (1 for the first); a finished or retried delivery gives its count back."""
    key = ctx.keys.deliveries(job_id, task)
    with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        pipe.expire(key, job_ttl(ctx, job_id))
        n, _ = pipe.execute()
    return int(n)


def uncount_delivery(ctx: Context, job_id: str, task: str) -> None:
    ctx.redis.decr(ctx.keys.deliveries(job_id, task))


def ext_and_type(output_format: str) -> tuple[str, str]:
    fmt = models.OUTPUT_FORMATS.get(output_format.lower())
    if fmt is None:
        raise JobError("invalid_options", f"unsupported output format {output_format!r}")
    return fmt[1], fmt[2]


def output_key(p: TaskPayload, ext: str) -> str:
    """The photo job's output: ``<output_prefix><input stem><ext>`` (deterministic)."""
    name = safe_filename(p.input.filename, default="photo")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return f"{p.output_prefix}{stem or 'photo'}{ext}"


def work_prefix(p: TaskPayload) -> str:
    return f"tenants/{p.tenant}/work/{p.job_id}/"


def emit(ctx: Context, job: JobRecord | None, event: str) -> None:
    """Queue a webhook event (a snapshot of the job) if the job subscribed to it."""
    if job is None or not job.webhook_url or event not in job.webhook_events or job.webhook_disabled:
        return
    data = job_out(job).model_dump(mode="json")
    try:
        deliver_webhook.apply_async(
            kwargs={"job_id": job.id, "event": event, "data": data, "msg_id": new_id("msg")},
            queue=settings.queue_io,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    except Exception as exc:  # webhooks are best effort: never fail a job for them
        log.warning("cannot queue webhook %s for %s: %s", event, job.id, exc)


def maybe_progress(ctx: Context, job_id: str) -> None:
    """job.progress, at most once per ``progress_webhook_interval_s`` per job."""
    job = ctx.store.get(job_id)
    if job is None or "job.progress" not in job.webhook_events:
        return
    interval_ms = int(settings.progress_webhook_interval_s * 1000)
    if interval_ms <= 0 or ctx.redis.set(ctx.keys.progress_sent(job_id), "1", nx=True, px=interval_ms):
        emit(ctx, job, "job.progress")


def begin(ctx: Context, job: JobRecord, total: int) -> JobRecord | None:
    """Start the job (requeuing it first when a lost worker left it running); None when canceled."""
    first = job.started_at is None
    if job.status == JobStatus.RUNNING:  # a redelivery (the previous worker was lost) or a retry
        log.warning("job %s found running (last worker %s): requeue and start again", job.id, job.worker)
        with suppress(InvalidTransition):
            ctx.store.transition(job.id, JobStatus.QUEUED)
    if not ctx.store.start(job.id, total=total, worker=ctx.worker_id):
        return None
    started = ctx.store.get(job.id)
    if first:
        emit(ctx, started, "job.started")
    return started


def fail_job(ctx: Context, job_id: str, code: str, message: str, report: dict[str, Any] | None = None) -> None:
    log.info("job %s failed: %s: %s", job_id, code, message)
    if ctx.store.fail(job_id, code, message, report=report):
        emit(ctx, ctx.store.get(job_id), "job.failed")


def give_up(ctx: Context, job_id: str, task: str, attempts: int) -> None:
    fail_job(
        ctx,
        job_id,
        "too_many_attempts",
        f"gave up after {attempts} attempts: the worker processing this job ({task}) stopped every time "
        "(the input may be too large or malformed for the service)",
    )


def read_object(ctx: Context, key: str, max_bytes: int, what: str) -> bytes:
    info = ctx.storage.head(key)
    if info is None:
        raise JobError("input_missing", f"the {what} is no longer in storage (expired or deleted)")
    if info.size > max_bytes:
        raise JobError("input_too_large", f"the {what} has {info.size} bytes, limit {max_bytes}")
    try:
        return ctx.storage.get_bytes(key)
    except StorageError as exc:
        cause = exc.__cause__
        if isinstance(cause, ClientError) and is_missing(cause):
            raise JobError("input_missing", f"the {what} is no longer in storage (expired or deleted)") from None
        raise


@contextmanager
def job_errors(task: Task, ctx: Context, job_id: str, counter: str) -> Iterator[None]:
    """Map a task's exceptions to job outcomes: JobError fails, outages retry, anything else fails."""
    try:
        yield
    except JobError as exc:
        fail_job(ctx, job_id, exc.code, exc.message)
    except SoftTimeLimitExceeded:
        fail_job(ctx, job_id, "timeout", f"the task ran over its time limit of {settings.task_soft_time_limit_s} s")
    except TRANSIENT as exc:
        retries = task.request.retries or 0
        if retries < settings.task_transient_retries:
            log.warning("job %s: %s; retry %d", job_id, exc, retries + 1)
            uncount_delivery(ctx, job_id, counter)
            raise task.retry(countdown=settings.task_retry_backoff_s * 2**retries, max_retries=None) from exc
        fail_job(ctx, job_id, "unavailable", f"storage or Redis unavailable after {retries} retries: {exc}")
    except Exception as exc:
        log.exception("job %s: unexpected error", job_id)
        fail_job(ctx, job_id, "internal_error", f"{type(exc).__name__}: {exc}")


def prelude(ctx: Context, payload: Any, counter: str) -> tuple[TaskPayload, JobRecord] | None:
    """Parse, load the job, count the delivery; None when there is nothing (more) to do."""
    try:
        p = parse_payload(payload)
    except JobError as exc:
        job_id = payload.get("job_id") if isinstance(payload, dict) else None
        log.error("rejecting task for job %s: %s", job_id, exc.message)
        if isinstance(job_id, str) and ctx.store.get(job_id) is not None:
            fail_job(ctx, job_id, exc.code, exc.message)
        return None
    job = ctx.store.get(p.job_id)
    if job is None:
        log.warning("job %s not found (expired or deleted): dropping its task", p.job_id)
        return None
    if job.terminal:
        log.info("job %s already %s: nothing to do", job.id, job.status)
        return None
    n = count_delivery(ctx, job.id, counter)
    if n > settings.task_max_deliveries:
        give_up(ctx, job.id, counter, n - 1)
        return None
    return p, job


# ---- one photo ---------------------------------------------------------------------------------------


@app.task(name=settings.task_protect, bind=True, max_retries=None)
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
    data = read_object(ctx, p.input.key, settings.max_image_bytes, "input photo")
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
    report = {"summary": {"entries": 1, "protected": 1, "errors": 0}, "photos": [entry]}
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


def run_protect(p: TaskPayload, protection: Any, images: list[Any], previews: bool = False) -> list[models.PhotoResult]:
    """models.protect with the job's options; ``min_success`` retries with the job's stronger budgets."""
    stronger = [functools.partial(build_protection, p, eps) for eps in p.escalation]
    return models.protect(protection, images, p.output_format, p.targets, min_success=p.min_success,
                          stronger=stronger, previews=previews, keep_metadata=p.keep_metadata)


def build_protection(p: TaskPayload, core_eps: float | None = None) -> Any:
    try:
        return models.build(settings, p.method, p.forgers, core_eps or p.core_eps, p.params,
                            models.job_seed(p.job_id))
    except models.ModelUnavailable as exc:
        raise JobError("model_unavailable", str(exc)) from None
    except models.BadOptions as exc:
        raise JobError("invalid_options", str(exc)) from None


# ---- archives: expand and fan out ------------------------------------------------------------------------


@dataclass
class GroupItem:
    index: int
    name: str
    key: str


@app.task(name=settings.task_protect_archive, bind=True, max_retries=None)
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


def download(ctx: Context, key: str, fh: Any) -> None:
    try:
        ctx.storage.client.download_fileobj(ctx.storage.bucket, key, fh)
    except ClientError as exc:
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
        download(ctx, p.input.key, fh)
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
            arc.EntryResult(item.index, item.name, "ok", key=key, size=len(outcome.data), report=outcome.report)
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
    report = {"summary": summary, "files": [zip_key[len(p.output_prefix) :], "report.json", "report.csv"]}
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


# ---- webhooks (io) ----------------------------------------------------------------------------------------


@app.task(name=TASK_DELIVER_WEBHOOK, bind=True, max_retries=None)
def deliver_webhook(self: Task, job_id: str, event: str, data: dict[str, Any], msg_id: str) -> str:
    """One signed attempt (:func:`service.webhooks.deliver`); retried after ``webhook_retry_schedule_s[n]``.

    Every attempt is logged on the job; 410 Gone disables the job's webhook; a refused destination or a
    redirect is not retried; the message id stays the same across attempts.
    """
    ctx = get_context()
    job = ctx.store.get(job_id)
    if job is None or not job.webhook_url:
        return "no job"
    if ctx.store.webhook_disabled(job_id):
        return "disabled"
    secret = get_webhook_secret(job.tenant, r=ctx.redis, settings=settings)
    if secret is None:
        log.warning("tenant %s has no webhook secret: %s of %s not sent", job.tenant, event, job_id)
        return "no secret"
    attempt = (self.request.retries or 0) + 1
    started = time.monotonic()
    result = deliver(
        job.webhook_url,
        event,
        data,
        secret,
        [],
        allow_hosts=settings.webhook_allow_hosts,
        require_https=settings.webhook_require_https,
        timeout_s=settings.webhook_timeout_s,
        msg_id=msg_id,
    )
    ctx.store.log_webhook_attempt(
        job_id,
        {
            "event": event,
            "msg_id": msg_id,
            "attempt": attempt,
            "at": time.time(),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
        },
    )
    if result.delivered:
        return "delivered"
    if result.status_code == 410:
        ctx.store.disable_webhook(job_id)
        return "disabled"
    if result.error and (result.error.startswith("refused") or result.error == "redirect refused"):
        return "refused"
    schedule = settings.webhook_retry_schedule_s
    if attempt <= len(schedule):
        raise self.retry(countdown=float(schedule[attempt - 1]), max_retries=None)
    return "gave up"
