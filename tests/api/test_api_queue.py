"""Celery messages sent by name land on the Redis queues (no worker needed)."""

from __future__ import annotations

import time

import redis
from apitest import celery_messages, message_for

from service.config import Settings
from service.contract import InputRef
from service.jobs import JobRecord
from service.queue import enqueue_job, make_celery, queue_depth
from service.redisdb import new_id


def _job(kind: str) -> JobRecord:
    now = time.time()
    job_id = new_id("job")
    return JobRecord(
        id=job_id,
        tenant="q",
        kind=kind,
        method="pgd",
        forgers=["stargan"],
        eps=0.025,
        core_eps=0.05,  # type: ignore[arg-type]
        input=InputRef(
            bucket="b", key=f"tenants/q/inputs/{job_id}/x", filename="x", content_type="image/png", size=3
        ),
        output_prefix=f"tenants/q/outputs/{job_id}/",
        created_at=now,
        expires_at=now + 60,
        webhook_url="https://example.com/h",
        webhook_events=["job.completed"],
    )


def test_enqueue_by_name_on_queues(settings: Settings, rclient: redis.Redis) -> None:
    app = make_celery(settings)
    try:
        before = queue_depth(rclient, settings, "gpu"), queue_depth(rclient, settings, "io")
        photo, archive = _job("image"), _job("archive")
        assert enqueue_job(app, photo, settings) == ("veil.protect", "gpu")
        assert enqueue_job(app, archive, settings) == ("veil.protect_archive", "io")
        assert queue_depth(rclient, settings, "gpu") == before[0] + 1
        assert queue_depth(rclient, settings, "io") == before[1] + 1
        msg = message_for(rclient, settings, "gpu", photo.id)
        assert msg is not None and msg["task"] == "veil.protect" and msg["args"] == []
        payload = msg["kwargs"]["payload"]
        assert set(payload) == {
            "v",
            "job_id",
            "tenant",
            "kind",
            "method",
            "forgers",
            "targets",
            "eps",
            "core_eps",
            "params",
            "output_format",
            "min_success",
            "escalation",
            "previews",
            "keep_metadata",
            "input",
            "output_bucket",
            "output_prefix",
            "webhook",
            "created_at",
            "expires_at",
        }
        assert payload["webhook"] == {"url": "https://example.com/h", "events": ["job.completed"]}
        assert all(m["id"] != photo.id for m in celery_messages(rclient, settings, "io"))
        # Everything the broker wrote is under the test prefix.
        assert not rclient.exists("gpu") or rclient.type("gpu") == "none"
    finally:
        app.close()
