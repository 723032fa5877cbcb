"""The workers' Celery app: the one app of :func:`service.queue.make_celery` (task names, queues, routes,
delivery guarantees) plus the worker process's own settings (time limits, shutdown).

Run (``-A worker.celery_app`` finds ``app``)::

    # protection, one process per GPU (models load in it; no fork after torch):
    celery -A worker.celery_app worker -Q gpu --pool=solo -n gpu@%h
    # or a CPU box: prefork children with one torch thread each (models load in each child):
    celery -A worker.celery_app worker -Q gpu --pool=prefork --concurrency=2 -n gpu@%h
    # archives (unpack, fan out, pack) and webhook deliveries: no torch is imported
    celery -A worker.celery_app worker -Q io --pool=threads --concurrency=4 -n io@%h

Queues and tasks (JSON only, one keyword argument each):

=========================  =====  =====================================================================
``veil.protect``           gpu    one photo (the gateway sends it)
``veil.protect_archive``   io     a zip: check and extract entries, fan out groups (the gateway sends it)
``veil.protect_group``     gpu    a group of an archive's photos; the last group to finish sends packing
``veil.pack_archive``      io     the result zip + report.json + report.csv; completes the job
``veil.deliver_webhook``   io     one signed webhook attempt; retried on ``webhook_retry_schedule_s``
=========================  =====  =====================================================================

Delivery: ``task_acks_late`` + ``task_reject_on_worker_lost`` (a task whose worker dies is redelivered;
``VEIL_TASK_MAX_DELIVERIES`` stops a poison input), prefetch 1, the Redis ``visibility_timeout``
(``VEIL_CELERY_VISIBILITY_TIMEOUT_S``) above the task time limit and the longest webhook retry wait, and a
soft shutdown that lets the running task finish (``VEIL_WORKER_SOFT_SHUTDOWN_TIMEOUT_S``). The time limits
(``VEIL_TASK_SOFT_TIME_LIMIT_S``: the job fails with ``timeout``; ``VEIL_TASK_TIME_LIMIT_S``: the child is
killed) are enforced by the prefork pool only; ``--pool=solo`` and ``threads`` do not enforce them.
"""

from __future__ import annotations

import celery

from service.queue import make_celery
from worker.broker import patch_restore_unacked
from worker.config import get_worker_settings

patch_restore_unacked()  # a Redis restart must not kill the worker (worker/broker.py)

settings = get_worker_settings()
app = make_celery(settings)  # queues, routes, serialization and delivery guarantees: service.queue
app.conf.update(
    include=["worker.tasks"],
    task_time_limit=settings.task_time_limit_s,
    task_soft_time_limit=settings.task_soft_time_limit_s,
    # A prefork child loads torch and the forgers in worker_process_init: give it time (compiling them takes
    # up to a minute each with a cold Inductor cache on a busy CPU).
    worker_proc_alive_timeout=600.0 if settings.worker_compile_forgers else 120.0,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
)

if tuple(int(p) for p in celery.__version__.split(".")[:2]) >= (5, 5):
    app.conf.update(
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_timeout_s,
        # also on an idle worker: held ETA tasks (webhook retries) are requeued cleanly on shutdown
        worker_enable_soft_shutdown_on_idle=True,
    )

import worker.lifecycle  # noqa: E402,F401  (signal handlers: model loading, heartbeat)
