"""The job protocol every task follows, and the helpers the task families share.

The task families: :mod:`worker.tasks.photo` (one photo), :mod:`worker.tasks.archives` (expand, fan out,
fan in, pack) and :mod:`worker.tasks.webhooks` (deliveries); their names and queues are
:mod:`service.queue`'s. Every task follows the job protocol of ``api/README.md`` through :class:`service.jobs.JobStore`:

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
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from botocore.exceptions import BotoCoreError, ClientError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from pydantic import ValidationError

from core.interrupt import Check, Interrupted, deadline_check, first_of, throttled, watch
from service.contract import PAYLOAD_VERSION, TaskPayload
from service.jobs import JobRecord
from service.leases import task_lease
from service.queue import TASK_DELIVER_WEBHOOK
from service.redisdb import new_id
from service.states import InvalidTransition, JobStatus
from service.storage import StorageError, is_changed, is_missing
from service.views import job_out
from worker import models
from worker.celery_app import app, settings
from worker.context import Context

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


# ---- the job protocol ---------------------------------------------------------------------------------------


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


def work_prefix(p: TaskPayload) -> str:
    return f"tenants/{p.tenant}/work/{p.job_id}/"


def emit(ctx: Context, job: JobRecord | None, event: str) -> None:
    """Queue a webhook event (a snapshot of the job) if the job subscribed to it."""
    if job is None or not job.webhook_url or event not in job.webhook_events or job.webhook_disabled:
        return
    data = job_out(job).model_dump(mode="json")
    try:
        app.send_task(
            TASK_DELIVER_WEBHOOK,
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


def read_object(ctx: Context, key: str, max_bytes: int, what: str, etag: str | None = None) -> bytes:
    """The object's bytes (the version ``etag`` only, when given: the one the gateway checked)."""
    info = ctx.storage.head(key)
    if info is None:
        raise JobError("input_missing", f"the {what} is no longer in storage (expired or deleted)")
    if info.size > max_bytes:
        raise JobError("input_too_large", f"the {what} has {info.size} bytes, limit {max_bytes}")
    try:
        return ctx.storage.get_bytes(key, etag)
    except StorageError as exc:
        cause = exc.__cause__
        if is_changed(cause):
            raise JobError("input_changed", f"the {what} was replaced after it was checked; upload it again") from None
        if isinstance(cause, ClientError) and is_missing(cause):
            raise JobError("input_missing", f"the {what} is no longer in storage (expired or deleted)") from None
        raise


# How often a running protection asks Redis whether its job was cancelled (it checks between steps).
CANCEL_POLL_S = 1.0


def stop_check(ctx: Context, job_id: str) -> Check:
    """What the work of a job checks between steps (core.interrupt): its soft time limit, counted from here
    (the solo pool enforces no Celery time limit), and whether the job was cancelled. A Redis outage while
    checking lets the work go on: the job's own writes will meet it."""
    def canceled() -> str | None:
        try:
            return "canceled" if ctx.store.is_canceled(job_id) else None
        except redis.RedisError:
            return None

    return first_of(deadline_check(settings.task_soft_time_limit_s), throttled(canceled, CANCEL_POLL_S))


@contextmanager
def job_errors(task: Task, ctx: Context, job_id: str, counter: str) -> Iterator[None]:
    """Map a task's exceptions to job outcomes: JobError fails, outages retry, anything else fails. The work
    inside stops between steps when the job is cancelled or runs over its soft time limit (:func:`stop_check`)."""
    lease = task_lease(job_id, counter)
    with suppress(redis.RedisError):  # Redis down: the task's own writes meet it and retry
        ctx.keeper.hold(lease, ctx.worker_id)  # a dead process's jobs are failed as worker_lost (service.leases)
    try:
        with watch(stop_check(ctx, job_id)):
            yield
    except JobError as exc:
        fail_job(ctx, job_id, exc.code, exc.message)
    except Interrupted as exc:
        if exc.reason == "canceled":
            log.info("job %s: cancelled; its work stopped", job_id)
        else:
            fail_job(ctx, job_id, "timeout", f"the task ran over its time limit of {settings.task_soft_time_limit_s} s")
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
    finally:
        with suppress(redis.RedisError):
            ctx.keeper.release(lease)


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


# ---- protection with the job's options ----------------------------------------------------------------


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
