"""/healthz, /readyz (Redis, S3, worker heartbeat) and /metrics."""

from __future__ import annotations

from collections.abc import Callable

import redis
from apitest import Tenant, assert_problem, image_bytes
from fastapi.testclient import TestClient

from service.config import Settings
from service.heartbeat import beat, live_workers, retire


def test_healthz(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_needs_a_live_consumer_of_each_queue(
    client: TestClient, settings: Settings, rclient: redis.Redis
) -> None:
    body = assert_problem(client.get("/readyz"), 503, "not-ready")
    assert body["failed"] == ["queue:gpu", "queue:io"]
    assert body["checks"]["redis"] == "ok" and body["checks"]["s3"] == "ok"

    key = beat(rclient, settings, hostname="gpu-worker-1", queues=["gpu"])
    try:
        assert key == f"{settings.redis_prefix}workers:gpu-worker-1"
        assert 0 < rclient.ttl(key) <= settings.worker_heartbeat_ttl_s
        assert live_workers(rclient, settings) == ["gpu-worker-1"]
        # the gpu worker alone: webhooks and archives (the io queue) have nobody (D3: a dead io worker)
        body = assert_problem(client.get("/readyz"), 503, "not-ready")
        assert body["failed"] == ["queue:io"] and body["checks"]["queue:gpu"] == "ok: 1"
        beat(rclient, settings, hostname="io-worker-1", queues=["io"])
        r = client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["queue:io"] == "ok: 1"
    finally:
        retire(rclient, settings, hostname="gpu-worker-1")
        retire(rclient, settings, hostname="io-worker-1")
    assert client.get("/readyz").status_code == 503


def test_readyz_reports_s3_and_redis_failures(make_client: Callable[..., TestClient]) -> None:
    no_bucket = make_client(s3_bucket="veil-missing-bucket", s3_create_bucket=False)
    body = assert_problem(no_bucket.get("/readyz"), 503, "not-ready")
    assert "s3" in body["failed"] and body["checks"]["redis"] == "ok"

    no_redis = make_client(redis_url="redis://127.0.0.1:1/0", redis_socket_timeout_s=0.5)
    body = assert_problem(no_redis.get("/readyz"), 503, "not-ready")
    assert set(body["failed"]) >= {"redis", "queue:gpu", "queue:io"}
    assert no_redis.get("/healthz").status_code == 200  # liveness does not depend on Redis
    assert_problem(
        no_redis.get("/v1/jobs", headers={"Authorization": "Bearer veil_sk_x"}), 503, "unavailable"
    )


def test_metrics(client: TestClient, tenant: Tenant) -> None:
    assert (
        client.post("/v1/jobs", headers=tenant.headers, files={"file": ("a.png", image_bytes())}).status_code
        == 202
    )
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'veil_queue_depth{queue="gpu"}' in text and 'veil_queue_depth{queue="io"}' in text
    assert 'veil_jobs_total{status="queued"}' in text
    assert 'veil_jobs_created_total{kind="image",method="pgd",status="queued"}' in text
    assert (
        'veil_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/jobs",status="202"}'
        in text
    )
    assert "veil_redis_up 1.0" in text and "veil_workers_live" in text
    depth = next(line for line in text.splitlines() if line.startswith('veil_queue_depth{queue="gpu"}'))
    assert float(depth.split()[-1]) >= 1
