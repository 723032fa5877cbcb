"""The Celery app the gateway sends tasks with (by name: no task code is imported here).

Tasks (JSON serializer, protocol 2, one keyword argument ``payload``: a
:class:`service.contract.TaskPayload`, see :func:`task_payload`):

* ``veil.protect`` on queue ``gpu``: a single photo.
* ``veil.protect_archive`` on queue ``io``: a zip archive (the io worker expands it, fans the images
  out and packs the results; see the report/README for the suggested flow).

The task id is the job id. Workers build the same app with :func:`make_celery` and register their
tasks under these names.
"""

from __future__ import annotations

from typing import Any

import redis
from celery import Celery

from service.config import Settings
from service.contract import PAYLOAD_VERSION, TaskPayload, WebhookTarget
from service.jobs import JobRecord

# kombu's Redis transport keeps priorities 3/6/9 in lists named <queue>\x06\x16<priority>.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def make_celery(settings: Settings) -> Celery:
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
        task_default_queue=settings.queue_gpu,
        task_routes={
            settings.task_protect: {"queue": settings.queue_gpu},
            settings.task_protect_archive: {"queue": settings.queue_io},
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
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
    if job.kind == "archive":
        name, queue = settings.task_protect_archive, settings.queue_io
    else:
        name, queue = settings.task_protect, settings.queue_gpu
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
