"""The Celery app, its task names and queues, defined once: the gateway sends tasks with it (by name: no
task code is imported here) and the workers (:mod:`worker.celery_app`) build the same app, add only their
process settings (time limits, shutdown) and register their tasks under these names.

The gateway sends (JSON serializer, protocol 2, one keyword argument ``payload``: a
:class:`service.contract.TaskPayload`, see :func:`task_payload`; the task id is the job id):

* ``veil.protect`` on queue ``gpu``: a single photo.
* ``veil.protect_archive`` on queue ``io``: a zip archive (the io worker expands it, fans the images
  out to ``veil.protect_group`` (gpu) and packs the results with ``veil.pack_archive`` (io)).

The workers send ``veil.protect_group``, ``veil.pack_archive`` and ``veil.deliver_webhook`` (io).
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery
from kombu import Queue

from service.config import Settings
from service.contract import PAYLOAD_VERSION, TaskPayload, WebhookTarget
from service.jobs import JobRecord

TASK_PROTECT = "veil.protect"
TASK_PROTECT_ARCHIVE = "veil.protect_archive"
TASK_PROTECT_GROUP = "veil.protect_group"
TASK_PACK_ARCHIVE = "veil.pack_archive"
TASK_DELIVER_WEBHOOK = "veil.deliver_webhook"
GPU_TASKS: tuple[str, ...] = (TASK_PROTECT, TASK_PROTECT_GROUP)
IO_TASKS: tuple[str, ...] = (TASK_PROTECT_ARCHIVE, TASK_PACK_ARCHIVE, TASK_DELIVER_WEBHOOK)

# kombu's Redis transport keeps priorities 3/6/9 in lists named <queue>\x06\x16<priority>.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def task_queue(settings: Settings, name: str) -> str:
    """The queue a task goes to: protection on ``queue_gpu``, everything else on ``queue_io``."""
    return settings.queue_gpu if name in GPU_TASKS else settings.queue_io


def make_celery(settings: Settings) -> Celery:
    """The app with the delivery guarantees: JSON only, late acks, redelivery of a lost worker's task
    (within the Redis ``visibility_timeout``), prefetch 1, every task routed to its queue."""
    app = Celery("veil", broker=settings.broker_url, set_as_current=False)
    transport: dict[str, Any] = {
        "socket_timeout": settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_socket_timeout_s,
        "visibility_timeout": settings.celery_visibility_timeout_s,
    }
    if settings.celery_key_prefix:
        transport["global_keyprefix"] = settings.celery_key_prefix
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_queues=(
            Queue(settings.queue_gpu, routing_key=settings.queue_gpu),
            Queue(settings.queue_io, routing_key=settings.queue_io),
        ),
        task_default_queue=settings.queue_gpu,
        task_routes={name: {"queue": task_queue(settings, name)} for name in (*GPU_TASKS, *IO_TASKS)},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=3,
        enable_utc=True,
    )
    return app


def task_payload(job: JobRecord, settings: Settings) -> TaskPayload:
    """The task's only argument; everything a worker needs (it still re-reads the job for cancels)."""
    return TaskPayload(
        **job.protect_options(),
        v=PAYLOAD_VERSION,
        job_id=job.id,
        tenant=job.tenant,
        kind=job.kind,
        input=job.input,
        output_bucket=settings.s3_bucket,
        output_prefix=job.output_prefix,
        webhook=WebhookTarget(url=job.webhook_url, events=job.webhook_events) if job.webhook_url else None,
        created_at=job.created_at,
        expires_at=job.expires_at,
    )


def enqueue_job(celery_app: Celery, job: JobRecord, settings: Settings) -> tuple[str, str]:
    """Send the job's task; returns (task name, queue). Raises on broker failure (bounded retries)."""
    name = TASK_PROTECT_ARCHIVE if job.kind == "archive" else TASK_PROTECT
    queue = task_queue(settings, name)
    celery_app.send_task(
        name,
        kwargs={"payload": task_payload(job, settings).model_dump(mode="json")},
        queue=queue,
        task_id=job.id,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 0.5},
    )
    return name, queue


def queue_depth(r: redis.Redis, settings: Settings, queue: str) -> int:
    """Messages waiting in a Celery queue on the Redis broker (all priority lists)."""
    with r.pipeline(transaction=False) as pipe:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(f"{settings.celery_key_prefix}{queue}{suffix}")
        return sum(int(n) for n in pipe.execute())
