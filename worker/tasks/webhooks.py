"""``veil.deliver_webhook`` (io): one signed webhook attempt, retried on the job's schedule."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task

from service.keys import get_webhook_secret
from service.queue import TASK_DELIVER_WEBHOOK
from service.webhooks import deliver
from worker.celery_app import app, settings
from worker.context import get_context

log = logging.getLogger(__name__)

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
