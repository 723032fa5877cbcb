"""Gateway services: the shared resources of an app and the job submission logic (blocking code,
called from the routes in a thread pool)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import IO, Any

from celery import Celery
from redis import Redis

from api.methods import Catalog
from api.metrics import Metrics
from api.problems import Problem, validation_problem
from api.ratelimit import RateLimiter
from api.schemas import JobOptions, metadata_size
from api.uploads import UploadRecord, UploadStore
from service.config import Settings
from service.contract import DEFAULT_WEBHOOK_EVENTS, InputRef, JobKind, ResolvedOptions
from service.errors import InputRejected, TooLarge, UnsupportedMediaType
from service.jobs import JobRecord, JobStore
from service.keys import Principal
from service.leases import leases_for
from service.queue import enqueue_job
from service.redisdb import new_id
from service.states import JobStatus
from service.storage import Storage, StorageError, input_key, is_changed, output_prefix, safe_filename
from service.validation import Inspected, inspect, sha256_file
from service.webhooks import WebhookRefused, check_url

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    redis: Redis
    broker_redis: Redis
    storage: Storage
    jobs: JobStore
    uploads: UploadStore
    limiter: RateLimiter
    celery: Celery
    catalog: Catalog
    metrics: Metrics


def resolve_options(opts: JobOptions, catalog: Catalog, settings: Settings) -> ResolvedOptions:
    """The request's options with the catalogue's defaults applied (a 422 problem listing every error)."""
    errors: list[dict[str, Any]] = []

    def err(loc: str, msg: str, kind: str = "value_error") -> None:
        errors.append({"loc": [loc], "msg": msg, "type": kind})

    method = catalog.method(opts.method)
    if method is None:
        err("method", f"unknown method {opts.method!r}; known: {', '.join(m.name for m in catalog.methods)}")
    attributes: set[str] | None = None
    for name in opts.forgers:
        forger = catalog.forger(name)
        if forger is None:
            err("forgers", f"unknown forger {name!r}; known: {', '.join(f.name for f in catalog.forgers)}")
        else:
            attributes = set(forger.attributes) if attributes is None else attributes & set(forger.attributes)
    if opts.targets is not None and attributes is not None:
        unknown = [t for t in opts.targets if t not in attributes]
        if unknown:
            err("targets", f"unknown target attributes {unknown}; known: {sorted(attributes)}")
    if opts.eps is not None and opts.strength is not None:
        err("strength", "give eps or strength, not both")
    if opts.output_format not in catalog.output_formats:
        err("output_format", f"unsupported output format {opts.output_format!r}")
    if opts.webhook_url is not None:
        try:
            check_url(opts.webhook_url, settings.webhook_allow_hosts, settings.webhook_require_https)
        except WebhookRefused as exc:
            err("webhook_url", str(exc))
    if opts.webhook_events is not None and opts.webhook_url is None:
        err("webhook_events", "webhook_events needs webhook_url")
    if metadata_size(opts.metadata) > settings.max_metadata_bytes:
        err("metadata", f"metadata over {settings.max_metadata_bytes} bytes of JSON")
    if errors or method is None:
        raise validation_problem(errors)
    if opts.eps is not None:
        eps = opts.eps
    elif opts.strength is not None:
        eps = method.eps.for_strength(opts.strength)
    else:
        eps = method.eps.default
    if eps > catalog.eps_max:
        raise validation_problem(
            [{"loc": ["eps"], "msg": f"eps over {catalog.eps_max}", "type": "value_error"}]
        )
    # In the units the worker enforces (core's ``lo < eps <= hi``): a tiny eps rounds to core eps 0.
    core_eps = catalog.core_eps(method, eps)
    lo, hi = method.core_eps_range
    if not lo < core_eps <= hi:
        raise validation_problem(
            [
                {
                    "loc": ["eps"],
                    "msg": f"eps {eps:g} is {core_eps:g} in {method.name}'s units ({method.core_units}), "
                    f"out of range ({lo:g}, {hi:g}]",
                    "type": "value_error",
                }
            ]
        )
    events = (
        [str(e) for e in opts.webhook_events]
        if opts.webhook_events is not None
        else list(DEFAULT_WEBHOOK_EVENTS)
    )
    # min_success: the presets stronger than the chosen budget, weakest first, are the retries' budgets.
    stronger = sorted({v for v in method.eps.presets() if v > eps}) if opts.min_success is not None else []
    return ResolvedOptions(
        method=method.name,
        forgers=list(opts.forgers),
        targets=list(opts.targets) if opts.targets is not None else None,
        eps=eps,
        core_eps=core_eps,
        strength=opts.strength,
        params=dict(method.defaults),
        output_format=opts.output_format,
        min_success=opts.min_success,
        escalation=[catalog.core_eps(method, v) for v in stronger],
        previews=opts.previews,
        keep_metadata=opts.keep_metadata,
        webhook_url=opts.webhook_url,
        webhook_events=events if opts.webhook_url else [],
        metadata=dict(opts.metadata or {}),
    )


def fingerprint(opts: JobOptions, source: dict[str, Any]) -> str:
    """What makes two submissions 'the same body' for Idempotency-Key: normalized options + input."""
    canonical = json.dumps({"options": opts.model_dump(mode="json"), "input": source}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Submitted:
    job: JobRecord
    created: bool  # False: an Idempotency-Key replay


def _new_job(
    services: Services, principal: Principal, job_id: str, r: ResolvedOptions, kind: JobKind, inp: InputRef
) -> JobRecord:
    now = time.time()
    return JobRecord(
        **dict(r),
        id=job_id,
        tenant=principal.tenant,
        status=JobStatus.QUEUED,
        kind=kind,
        input=inp,
        output_prefix=output_prefix(principal.tenant, job_id),
        progress_total=1 if kind == "image" else 0,
        created_at=now,
        expires_at=now + services.settings.retention_days * 86400,
        task_id=job_id,
    )


def _claim(
    services: Services, principal: Principal, idem_key: str | None, fp: str
) -> tuple[str, JobRecord | None]:
    """A new job id, or the job an Idempotency-Key replay refers to."""
    job_id = new_id("job")
    if idem_key is None:
        return job_id, None
    res = services.jobs.reserve_idempotency(principal.tenant, idem_key, fp, job_id)
    if res.outcome == "new":
        return job_id, None
    if res.outcome == "conflict":
        raise Problem(
            422,
            "idempotency-key-reused",
            "this Idempotency-Key was used with a different request body",
            title="Idempotency key reused",
        )
    if res.outcome == "in_progress":
        raise Problem(
            409,
            "idempotency-in-progress",
            "a request with this Idempotency-Key is being processed",
            title="Request in progress",
            headers={"Retry-After": "1"},
        )
    job = services.jobs.get(res.job_id, principal.tenant)
    if job is None:  # expired between the two reads
        raise Problem(409, "idempotency-in-progress", "retry the request", headers={"Retry-After": "1"})
    return res.job_id, job


def _store_and_enqueue(
    services: Services, job: JobRecord, principal: Principal, idem_key: str | None
) -> JobRecord:
    services.jobs.create(job)
    try:
        enqueue_job(services.celery, job, services.settings)
    except Exception as exc:
        log.exception("enqueue of %s failed", job.id)
        services.jobs.fail(job.id, "enqueue_failed", f"could not enqueue the job: {type(exc).__name__}")
        services.metrics.jobs_created.labels(job.method, job.kind, "failed").inc()
        if idem_key is not None:
            services.jobs.release_idempotency(principal.tenant, idem_key)
        raise Problem(
            503,
            "unavailable",
            "the job queue is unavailable; retry later",
            title="Service unavailable",
            job_id=job.id,
            headers={"Retry-After": "5"},
        ) from exc
    services.metrics.jobs_created.labels(job.method, job.kind, "queued").inc()
    return job


def submit_file(
    services: Services,
    principal: Principal,
    opts: JobOptions,
    fileobj: IO[bytes],
    size: int,
    filename: str | None,
    idem_key: str | None,
) -> Submitted:
    """A photo or archive posted to POST /v1/jobs: inspect it, store it, create and enqueue the job."""
    settings = services.settings
    resolved = resolve_options(opts, services.catalog, settings)
    inspected = inspect(fileobj, size, settings, inspect_entries=True)
    digest = sha256_file(fileobj)
    name = safe_filename(filename, default="input.zip" if inspected.kind == "archive" else "input")
    fp = fingerprint(opts, {"sha256": digest, "filename": name})
    job_id, existing = _claim(services, principal, idem_key, fp)
    if existing is not None:
        return Submitted(existing, created=False)
    key = input_key(principal.tenant, job_id, name)
    leases = leases_for(services.redis, settings)
    try:
        # noted before the write: an upload S3 completes after we gave up on it is deleted later (service.leases)
        leases.note_input(job_id, key, settings.input_grace_s)
        services.storage.put_fileobj(key, fileobj, inspected.content_type)
        inp = InputRef(
            bucket=services.storage.bucket,
            key=key,
            filename=name,
            content_type=inspected.content_type,
            size=size,
            sha256=digest,
        )
        job = _new_job(services, principal, job_id, resolved, inspected.kind, inp)
        if inspected.kind == "archive":
            job = job.model_copy(update={"progress_total": inspected.entries or 0})
    except BaseException:
        if idem_key is not None:
            services.jobs.release_idempotency(principal.tenant, idem_key)
        services.storage.delete(key)  # best effort; a write still in flight is caught by the pending note
        raise
    done = _store_and_enqueue(services, job, principal, idem_key)
    leases.input_recorded(job_id, key)  # the job record names it now
    return Submitted(done, created=True)


def inspect_upload(services: Services, upload: UploadRecord) -> UploadRecord:
    """Check an uploaded object (size, type, pixels / zip directory) by ranged reads; mark it ready,
    or failed (deleting the object) and raise the refusal (a :class:`service.errors.InputRejected`)."""
    info = services.storage.head(upload.key)
    if info is None:
        raise Problem(409, "conflict", "the upload has not been received yet", title="Upload incomplete")
    try:
        if info.size > upload.max_bytes:
            raise TooLarge(f"uploaded {info.size} bytes, limit {upload.max_bytes}", limit=upload.max_bytes)
        # pinned to the version HEAD saw: a replacement during the check is a 409, not a checked object
        with services.storage.open_range_reader(upload.key, info.size, info.etag) as reader:
            inspected: Inspected = inspect(reader, info.size, services.settings, inspect_entries=False)
        declared_family = "archive" if upload.content_type == "application/zip" else "image"
        if inspected.kind != declared_family:
            raise UnsupportedMediaType(
                f"declared {upload.content_type} but the content is {inspected.content_type}"
            )
    except InputRejected as exc:
        services.storage.delete(upload.key)
        services.uploads.update(upload, status="failed", error=exc.detail, actual_size=info.size)
        raise
    except (StorageError, OSError) as exc:
        if is_changed(exc.__cause__):
            raise upload_replaced() from exc
        raise Problem(
            503, "unavailable", f"cannot read the upload: {exc}", title="Service unavailable"
        ) from exc
    return services.uploads.update(
        upload,
        status="ready",
        kind=inspected.kind,
        actual_size=info.size,
        etag=info.etag,
        error=None,
        content_type=inspected.content_type,
    )


def upload_replaced() -> Problem:
    return Problem(409, "conflict", "the uploaded object was replaced after it was checked; create a new upload",
                   title="Upload replaced")


def submit_upload(
    services: Services, principal: Principal, opts: JobOptions, upload_id: str, idem_key: str | None
) -> Submitted:
    """A job on an object uploaded through POST /v1/uploads."""
    resolved = resolve_options(opts, services.catalog, services.settings)
    upload = services.uploads.get(upload_id, principal.tenant)
    if upload is None:
        raise Problem(404, "not-found", f"no upload {upload_id}", title="Not Found")
    fp = fingerprint(opts, {"upload_id": upload_id})
    if upload.status == "failed":
        raise Problem(
            422, "validation-error", f"the upload failed validation: {upload.error}", title="Validation error"
        )
    if upload.status == "pending":
        if upload.mode == "multipart":
            raise Problem(409, "conflict", "complete the multipart upload first", title="Upload incomplete")
        upload = inspect_upload(services, upload)
    else:  # checked before: still the version that was checked? (its presigned POST is still valid)
        info = services.storage.head(upload.key)
        if info is None or (upload.etag is not None and info.etag != upload.etag):
            raise upload_replaced()
    job_id, existing = _claim(services, principal, idem_key, fp)
    if existing is not None:
        return Submitted(existing, created=False)
    assert upload.kind is not None and upload.actual_size is not None
    inp = InputRef(
        bucket=services.storage.bucket,
        key=upload.key,
        filename=upload.filename,
        content_type=upload.content_type,
        size=upload.actual_size,
        upload_id=upload.id,
        etag=upload.etag,
    )
    job = _new_job(services, principal, job_id, resolved, upload.kind, inp)
    return Submitted(_store_and_enqueue(services, job, principal, idem_key), created=True)


def parse_prefer_wait(header: str | None, cap: float) -> float | None:
    """``Prefer: wait=N`` (RFC 7240) -> min(N, cap) seconds, or None."""
    if not header:
        return None
    for part in header.split(","):
        token = part.strip().split(";", 1)[0].strip()
        name, _, value = token.partition("=")
        if name.strip().lower() == "wait":
            try:
                seconds = float(value.strip().strip('"'))
            except ValueError:
                return None
            if math.isnan(seconds) or seconds < 0:
                return None
            return min(seconds, cap)
    return None
