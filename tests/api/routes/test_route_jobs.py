"""POST/GET /v1/jobs, cancel, outputs: against the real Redis, MiniStack S3 and the Celery queue in Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from apitest import (
    MiB,
    Receiver,
    S3Server,
    Tenant,
    assert_problem,
    image_bytes,
    message_for,
    wait_until,
    zip_bytes,
)
from fastapi.testclient import TestClient

from service.config import Settings
from service.jobs import JobStore
from service.states import JobStatus


def submit(
    client: TestClient,
    tenant: Tenant,
    data: bytes,
    filename: str = "face.png",
    fields: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.post(
        "/v1/jobs",
        headers={**tenant.headers, **(headers or {})},
        files={"file": (filename, data, "application/octet-stream")},
        data=fields or {},
    )


def test_submit_photo_queues_job_stores_input_and_enqueues(
    client: TestClient, tenant: Tenant, settings: Settings, rclient: redis.Redis, s3_server: S3Server
) -> None:
    png = image_bytes(40, 30)
    r = submit(
        client, tenant, png, fields={"forgers": "stargan,attgan", "eps": "0.03", "metadata": '{"ref": 7}'}
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["method"] == "pgd" and job["forgers"] == ["stargan", "attgan"]
    assert job["eps"] == 0.03 and job["output_format"] == "png" and job["metadata"] == {"ref": 7}
    assert job["progress"] == {"done": 0, "total": 1}
    assert job["input"]["kind"] == "image" and job["input"]["content_type"] == "image/png"
    assert job["created_at"] and job["expires_at"] and job["started_at"] is None and job["error"] is None

    key = f"tenants/{tenant.name}/inputs/{job['id']}/face.png"
    obj = s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)
    assert obj["Body"].read() == png and obj["ContentType"] == "image/png"

    msg = message_for(rclient, settings, "gpu", job["id"])
    assert msg is not None and msg["task"] == "veil.protect" and msg["routing_key"] == "gpu"
    payload = msg["kwargs"]["payload"]
    assert payload["v"] == 1 and payload["job_id"] == job["id"] and payload["tenant"] == tenant.name
    assert payload["input"]["key"] == key and payload["input"]["bucket"] == s3_server.bucket
    assert payload["output_prefix"] == f"tenants/{tenant.name}/outputs/{job['id']}/"
    assert payload["core_eps"] == pytest.approx(0.06)  # pgd: core units on [-1, 1]
    assert payload["params"]["steps"] == 10

    got = client.get(f"/v1/jobs/{job['id']}", headers=tenant.headers)
    assert got.status_code == 200 and got.json()["id"] == job["id"]


def test_submit_zip_archive_goes_to_io_queue(
    client: TestClient, tenant: Tenant, settings: Settings, rclient: redis.Redis
) -> None:
    archive = zip_bytes({"a.png": image_bytes(), "dir/b.jpg": image_bytes(fmt="JPEG"), "readme.txt": b"hi"})
    r = submit(
        client, tenant, archive, filename="faces.zip", fields={"method": "dwt-pgd", "strength": "high"}
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["input"]["kind"] == "archive" and job["progress"]["total"] == 2
    assert job["eps"] == 0.04 and job["strength"] == "high"
    msg = message_for(rclient, settings, "io", job["id"])
    assert msg is not None and msg["task"] == "veil.protect_archive"
    assert msg["kwargs"]["payload"]["kind"] == "archive"
    assert message_for(rclient, settings, "gpu", job["id"]) is None


def _bomb_png() -> bytes:
    return image_bytes(1001, 1000)  # 1,001,000 pixels > the 1,000,000 test limit


@pytest.mark.parametrize(
    ("name", "data", "fields", "status", "slug"),
    [
        ("not-image", b"GIF89a" + b"\0" * 100, {}, 415, "unsupported-media-type"),
        ("truncated-png", b"\x89PNG\r\n\x1a\n" + b"\0" * 10, {}, 415, "unsupported-media-type"),
        ("too-many-pixels", None, {}, 413, "too-many-pixels"),
        ("bad-zip", b"PK\x03\x04" + b"garbage" * 20, {}, 415, "unsupported-media-type"),
        ("too-many-entries", "entries", {}, 413, "too-many-entries"),
        ("zip-slip", "slip", {}, 422, "invalid-archive"),
        ("zip-no-images", "noimg", {}, 422, "invalid-archive"),
        ("unknown-method", "png", {"method": "magic"}, 422, "validation-error"),
        ("eps-zero", "png", {"eps": "0"}, 422, "validation-error"),
        ("eps-too-big", "png", {"eps": "0.2"}, 422, "validation-error"),
        ("eps-underflows-core-units", "png", {"eps": "1e-300"}, 422, "validation-error"),  # core eps 0.0
        ("eps-rounds-to-zero", "png", {"eps": "1e-12"}, 422, "validation-error"),
        ("eps-and-strength", "png", {"eps": "0.01", "strength": "low"}, 422, "validation-error"),
        ("unknown-forger", "png", {"forgers": "stargan,deepnude"}, 422, "validation-error"),
        ("unknown-target", "png", {"targets": "Bald"}, 422, "validation-error"),
        ("bad-format", "png", {"output_format": "gif"}, 422, "validation-error"),
        ("bad-metadata", "png", {"metadata": "{not json"}, 422, "validation-error"),
        ("big-metadata", "png", {"metadata": '{"x": "' + "y" * 5000 + '"}'}, 422, "validation-error"),
        ("unknown-field", "png", {"colour": "red"}, 422, "validation-error"),
        ("private-webhook", "png", {"webhook_url": "https://10.1.2.3/hook"}, 422, "validation-error"),
        ("http-webhook", "png", {"webhook_url": "http://example.com/hook"}, 422, "validation-error"),
    ],
)
def test_bad_inputs_are_problems(
    client: TestClient, tenant: Tenant, name: str, data: Any, fields: dict[str, str], status: int, slug: str
) -> None:
    payload = (
        {
            None: None,
            "png": image_bytes(),
            "entries": zip_bytes({f"{i}.png": image_bytes(4, 4) for i in range(6)}),
            "slip": zip_bytes({"../evil.png": image_bytes()}),
            "noimg": zip_bytes({"a.txt": b"x"}),
        }.get(data, data)
        if not isinstance(data, bytes)
        else data
    )
    if name == "too-many-pixels":
        payload = _bomb_png()
    r = submit(client, tenant, payload, fields=fields)
    body = assert_problem(r, status, slug)
    if status == 422 and slug == "validation-error":
        assert body["errors"] and body["errors"][0]["loc"]


def test_too_large_by_content_length_is_413_before_reading(client: TestClient, tenant: Tenant) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * MiB + 10)
    r = submit(client, tenant, big)
    body = assert_problem(r, 413, "too-large")
    assert body["limit"] == 3 * MiB


def test_image_over_byte_limit_is_413(client: TestClient, tenant: Tenant) -> None:
    big = b"\x89PNG\r\n\x1a\n" + b"\0" * (2 * MiB + 10)  # under the request limit, over the image limit
    assert_problem(submit(client, tenant, big), 413, "too-large")


def test_missing_file_and_wrong_content_type(client: TestClient, tenant: Tenant) -> None:
    assert_problem(client.post("/v1/jobs", headers=tenant.headers, data={"method": "pgd"}), 422)
    r = client.post("/v1/jobs", headers={**tenant.headers, "content-type": "text/plain"}, content=b"hello")
    assert_problem(r, 415, "unsupported-media-type")
    r = client.post(
        "/v1/jobs", headers={**tenant.headers, "content-type": "application/json"}, content=b"{bad"
    )
    assert_problem(r, 422, "validation-error")
    r = client.post("/v1/jobs", headers=tenant.headers, json={"upload_id": "upl_nothere", "eps": 0.5})
    assert_problem(r, 422, "validation-error")


def test_auth_errors_are_401_problems(client: TestClient) -> None:
    r = client.get("/v1/jobs")
    assert_problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert_problem(client.get("/v1/jobs", headers={"Authorization": "Bearer veil_sk_nope"}), 401)
    assert_problem(client.get("/v1/jobs", headers={"Authorization": "Basic abc"}), 401)


def test_unknown_job_and_route_are_404_problems(client: TestClient, tenant: Tenant) -> None:
    assert_problem(
        client.get("/v1/jobs/job_00000000000000000000000000", headers=tenant.headers), 404, "not-found"
    )
    assert_problem(client.get("/v1/jobs/../../etc", headers=tenant.headers), 404)
    assert_problem(client.get("/v2/nothing"), 404)


def test_idempotency_same_body_same_job_different_body_422(
    client: TestClient, tenant: Tenant, settings: Settings, rclient: redis.Redis
) -> None:
    png = image_bytes(16, 16)
    headers = {"Idempotency-Key": "order-42"}
    first = submit(client, tenant, png, fields={"eps": "0.02"}, headers=headers)
    assert first.status_code == 202
    again = submit(client, tenant, png, fields={"eps": "0.02"}, headers=headers)
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    listed = client.get("/v1/jobs", headers=tenant.headers).json()["data"]
    assert [j["id"] for j in listed] == [first.json()["id"]]  # one job, one message
    queued = [m for m in (message_for(rclient, settings, "gpu", first.json()["id"]),) if m]
    assert len(queued) == 1

    different = submit(client, tenant, png, fields={"eps": "0.03"}, headers=headers)
    assert_problem(different, 422, "idempotency-key-reused")
    other_file = submit(client, tenant, image_bytes(17, 16), fields={"eps": "0.02"}, headers=headers)
    assert_problem(other_file, 422, "idempotency-key-reused")
    # Keys are per tenant.
    other = submit(client, tenant, png, fields={"eps": "0.02"}, headers={"Idempotency-Key": "order-43"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_idempotent_replay_of_finished_job_is_200(
    client: TestClient, tenant: Tenant, store: JobStore
) -> None:
    headers = {"Idempotency-Key": "k-finished"}
    job_id = submit(client, tenant, image_bytes(), headers=headers).json()["id"]
    assert store.start(job_id) and store.succeed(job_id)
    r = submit(client, tenant, image_bytes(), headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "succeeded"


def test_tenant_isolation_is_404(client: TestClient, new_tenant: Callable[[], Tenant]) -> None:
    alice, bob = new_tenant(), new_tenant()
    job_id = submit(client, alice, image_bytes()).json()["id"]
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/outputs"),
    ]:
        assert_problem(client.request(method, path, headers=bob.headers), 404, "not-found")
    assert client.get("/v1/jobs", headers=bob.headers).json()["data"] == []
    assert client.get(f"/v1/jobs/{job_id}", headers=alice.headers).json()["status"] == "queued"


def test_cancel(client: TestClient, tenant: Tenant, store: JobStore) -> None:
    job_id = submit(client, tenant, image_bytes()).json()["id"]
    r = client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    assert r.status_code == 200 and r.json()["status"] == "canceled" and r.json()["finished_at"]
    assert store.is_canceled(job_id)
    assert not store.start(job_id)  # a worker picking it up afterwards backs off
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers).status_code == 200  # idempotent

    running = submit(client, tenant, image_bytes()).json()["id"]
    assert store.start(running, worker="w1")
    assert client.post(f"/v1/jobs/{running}/cancel", headers=tenant.headers).json()["status"] == "canceled"
    assert not store.succeed(running)  # the worker loses the race: the job stays canceled
    assert store.get(running).status == JobStatus.CANCELED  # type: ignore[union-attr]

    done = submit(client, tenant, image_bytes()).json()["id"]
    assert store.start(done) and store.succeed(done)
    body = assert_problem(client.post(f"/v1/jobs/{done}/cancel", headers=tenant.headers), 409, "conflict")
    assert body["job_status"] == "succeeded"


def test_list_cursor_pagination_and_status_filter(
    client: TestClient, tenant: Tenant, store: JobStore
) -> None:
    ids = [submit(client, tenant, image_bytes(8 + i, 8)).json()["id"] for i in range(5)]
    assert store.start(ids[1]) and store.fail(ids[1], "bad_face", "no face found")
    assert store.start(ids[3])

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/jobs", headers=tenant.headers, params=params).json()
        seen += [j["id"] for j in page["data"]]
        assert len(page["data"]) <= 2
        cursor = page["next_cursor"]
        assert page["has_more"] == (cursor is not None)
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once

    failed = client.get("/v1/jobs", headers=tenant.headers, params={"status": "failed"}).json()["data"]
    assert [j["id"] for j in failed] == [ids[1]]
    assert failed[0]["error"] == {"code": "bad_face", "message": "no face found"}
    running = client.get("/v1/jobs", headers=tenant.headers, params={"status": "running"}).json()["data"]
    assert [j["id"] for j in running] == [ids[3]] and running[0]["started_at"]
    queued = client.get("/v1/jobs", headers=tenant.headers, params={"status": "queued", "limit": 10}).json()
    assert [j["id"] for j in queued["data"]] == [ids[4], ids[2], ids[0]] and not queued["has_more"]

    assert_problem(client.get("/v1/jobs", headers=tenant.headers, params={"status": "lost"}), 422)
    assert_problem(client.get("/v1/jobs", headers=tenant.headers, params={"cursor": "!!"}), 422)


def test_outputs_presigned_urls_work_then_expire(
    client: TestClient, tenant: Tenant, store: JobStore, s3_server: S3Server
) -> None:
    job = submit(client, tenant, image_bytes()).json()
    prefix = f"tenants/{tenant.name}/outputs/{job['id']}/"
    s3_server.client().put_object(Bucket=s3_server.bucket, Key=prefix + "face.png", Body=b"protected")
    assert store.start(job["id"]) and store.succeed(job["id"])
    r = client.get(f"/v1/jobs/{job['id']}/outputs", headers=tenant.headers, params={"ttl": 2})
    signed = time.time()  # the URL was signed before this
    assert r.status_code == 200, r.text
    outputs = r.json()
    assert outputs["status"] == "succeeded" and outputs["expires_in"] == 2
    [item] = outputs["data"]
    assert item["name"] == "face.png" and item["size"] == 9
    got = httpx.get(item["url"], timeout=5)
    assert got.status_code == 200 and got.content == b"protected"
    # X-Amz-Date has one-second resolution: a 2 s URL lives 1-2 s, so it is used at once and
    # checked again 2.3 s after it was signed, when it has surely expired.
    time.sleep(max(0.0, signed + 2.3 - time.time()))
    assert httpx.get(item["url"], timeout=5).status_code == 403


def test_prefer_wait_returns_201_when_finished(
    client: TestClient, new_tenant: Callable[[], Tenant], store: JobStore
) -> None:
    tenant = new_tenant()

    def fake_worker() -> None:
        def queued() -> list[Any]:
            return store.list_jobs(tenant.name, JobStatus.QUEUED, 1)[0]

        jobs = wait_until(queued, timeout=5)
        if jobs:
            store.start(jobs[0].id, worker="fake")
            store.set_progress(jobs[0].id, 1)
            store.succeed(jobs[0].id)

    thread = threading.Thread(target=fake_worker, daemon=True)
    thread.start()
    start = time.monotonic()
    r = submit(client, tenant, image_bytes(), headers={"Prefer": "wait=4"})
    thread.join(timeout=6)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "succeeded" and r.json()["progress"] == {"done": 1, "total": 1}
    assert r.headers["preference-applied"] == "wait=4"
    assert time.monotonic() - start < 4


def test_prefer_wait_times_out_with_202_and_is_capped(client: TestClient, tenant: Tenant) -> None:
    start = time.monotonic()
    r = submit(client, tenant, image_bytes(), headers={"Prefer": "respond-async, wait=0.3"})
    assert r.status_code == 202 and r.json()["status"] == "queued"
    assert 0.25 < time.monotonic() - start < 3
    r = submit(client, tenant, image_bytes(), headers={"Prefer": "wait=0"})
    assert r.status_code == 202
    from api.submit import parse_prefer_wait

    assert parse_prefer_wait("wait=600", 30) == 30 and parse_prefer_wait("wait=abc", 30) is None


def test_get_job_long_polls_with_prefer_wait(
    client: TestClient, tenant: Tenant, new_tenant: Callable[[], Tenant], store: JobStore
) -> None:
    job_id = submit(client, tenant, image_bytes()).json()["id"]
    start = time.monotonic()
    r = client.get(f"/v1/jobs/{job_id}", headers={**tenant.headers, "Prefer": "wait=0.4"})
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert r.headers["preference-applied"] == "wait=0.4" and 0.35 < time.monotonic() - start < 3

    def finish() -> None:
        time.sleep(0.3)
        store.start(job_id, worker="fake")
        store.succeed(job_id)

    thread = threading.Thread(target=finish, daemon=True)
    thread.start()
    start = time.monotonic()
    r = client.get(f"/v1/jobs/{job_id}", headers={**tenant.headers, "Prefer": "wait=5"})
    thread.join(timeout=5)
    assert r.json()["status"] == "succeeded" and time.monotonic() - start < 4
    # Finished jobs answer at once; another tenant still gets 404, not a wait.
    start = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}", headers={**tenant.headers, "Prefer": "wait=5"}).status_code == 200
    other = new_tenant()
    assert client.get(f"/v1/jobs/{job_id}", headers={**other.headers, "Prefer": "wait=5"}).status_code == 404
    assert time.monotonic() - start < 1


def test_rate_limit_429_with_retry_after(make_client: Callable[..., TestClient], tenant: Tenant) -> None:
    limited = make_client(rate_limit_requests=3, rate_limit_window_s=30)
    codes = [limited.get("/v1/jobs", headers=tenant.headers).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = limited.get("/v1/jobs", headers=tenant.headers)
    body = assert_problem(r, 429, "rate-limited")
    assert 1 <= int(r.headers["retry-after"]) <= 30 and body["retry_after"] == int(r.headers["retry-after"])


def test_queue_down_is_503_and_job_failed(
    make_client: Callable[..., TestClient], tenant: Tenant, store: JobStore
) -> None:
    broken = make_client(celery_broker_url="redis://127.0.0.1:1/0")
    r = submit(broken, tenant, image_bytes(), headers={"Idempotency-Key": "down"})
    body = assert_problem(r, 503, "unavailable")
    assert r.headers["retry-after"]
    job = store.get(body["job_id"])
    assert job is not None and job.status == JobStatus.FAILED and job.error_code == "enqueue_failed"
    # The key was released: the retry (once the queue is back) makes a new job.
    assert store.reserve_idempotency(tenant.name, "down", "fp", "job_x").outcome == "new"


def test_job_webhook_attempts_are_shown(
    make_client: Callable[..., TestClient],
    tenant: Tenant,
    store: JobStore,
    receiver: Receiver,
    settings: Settings,
) -> None:
    from standardwebhooks import Webhook

    from service.keys import get_webhook_secret
    from service.webhooks import send_job_event

    cfg = {"webhook_allow_hosts": ["127.0.0.1"]}
    c = make_client(**cfg)
    r = submit(
        c, tenant, image_bytes(), fields={"webhook_url": receiver.url, "webhook_events": "job.completed"}
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["webhook"] == {
        "url": receiver.url,
        "events": ["job.completed"],
        "disabled": False,
        "attempts": None,
    }
    record = store.get(job["id"])
    assert record is not None and store.start(job["id"]) and store.succeed(job["id"])
    secret = get_webhook_secret(tenant.name, r=store.r, settings=settings)
    result = send_job_event(
        store, settings.model_copy(update=cfg), store.get(job["id"]), "job.completed", secret
    )  # type: ignore[arg-type]
    assert result is not None and result.delivered
    event = Webhook(secret).verify(receiver.requests[0]["body"], receiver.requests[0]["headers"])  # type: ignore[arg-type]
    assert event["type"] == "job.completed" and event["data"]["status"] == "succeeded"
    shown = c.get(f"/v1/jobs/{job['id']}", headers=tenant.headers).json()["webhook"]
    assert [a["status_code"] for a in shown["attempts"]] == [200] and shown["attempts"][0][
        "event"
    ] == "job.completed"


def test_min_success_sets_the_retry_budgets_and_previews_are_echoed(
    client: TestClient, tenant: Tenant, store: JobStore
) -> None:
    r = submit(client, tenant, image_bytes(), fields={"strength": "low", "min_success": "0.9", "previews": "true"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["min_success"] == 0.9 and body["previews"] is True
    record = store.get(body["id"])
    assert record is not None
    # pgd presets low/medium/high 0.01/0.025/0.05 of the range; core units are twice that ([-1, 1]).
    assert record.escalation == [0.05, 0.1] and record.core_eps == 0.02
    plain = submit(client, tenant, image_bytes(), fields={"strength": "high"}).json()
    assert plain["min_success"] is None and plain["previews"] is False
    assert store.get(plain["id"]).escalation == []  # type: ignore[union-attr]
    for bad in ("1.5", "-0.1", "often"):
        r = submit(client, tenant, image_bytes(), fields={"min_success": bad})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")


DEEP = '{"a":' * 5000 + "1" + "}" * 5000  # Python's JSON decoder recurses once per level


@pytest.mark.parametrize(
    "fields",
    [
        {"metadata": DEEP},
        {"targets": "[" * 5000 + "]" * 5000},
        {"metadata": '{"ok": ' + "[" * 40 + "]" * 40 + "}"},  # over the depth limit (32), far from recursion
    ],
    ids=["metadata", "targets", "metadata-over-limit"],
)
def test_deeply_nested_json_form_fields_are_422(client: TestClient, tenant: Tenant, fields: dict[str, str]) -> None:
    body = assert_problem(submit(client, tenant, image_bytes(), fields=fields), 422, "validation-error")
    assert body["errors"][0]["type"] == "json_too_deep" and body["errors"][0]["loc"] == [next(iter(fields))]


def test_deeply_nested_json_bodies_are_422(client: TestClient, tenant: Tenant) -> None:
    json_headers = {**tenant.headers, "content-type": "application/json"}
    deep_metadata = '{"upload_id": "upl_x", "metadata": ' + DEEP + "}"
    for raw in (DEEP, deep_metadata, "[" * 100_000):
        body = assert_problem(client.post("/v1/jobs", headers=json_headers, content=raw), 422, "validation-error")
        assert body["errors"][0]["type"] == "json_too_deep"
    # Nesting within the limit still parses (and then fails on the unknown upload).
    shallow = {"upload_id": "upl_nothere", "metadata": {"a": {"b": {"c": [1, [2, {"d": "[[[[{{{{"}]]}}}}
    assert_problem(client.post("/v1/jobs", headers=tenant.headers, json=shallow), 404, "not-found")


def test_an_input_s3_completes_after_a_503_is_deleted_by_the_reconciler(
    client: TestClient, tenant: Tenant, settings: Settings, rclient: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """D5: S3 hangs, the gateway answers 503, and S3 completes the write later: the object has no job record,
    and once its grace has passed the reconciler (service.leases) deletes it."""
    from service.leases import leases_for, reconcile
    from service.storage import Storage, StorageError

    late: list[tuple[str, bytes, str]] = []
    real_put = Storage.put_fileobj

    def hung(self: Storage, key: str, fileobj: Any, content_type: str) -> None:
        late.append((key, fileobj.read(), content_type))  # S3 has the bytes and will finish later
        raise StorageError(f"cannot store {key}: read timeout")

    monkeypatch.setattr(Storage, "put_fileobj", hung)
    r = submit(client, tenant, image_bytes(40, 30))
    assert r.status_code == 503, r.text
    monkeypatch.setattr(Storage, "put_fileobj", real_put)
    [(key, data, ctype)] = late
    storage = Storage(settings)
    storage.put_bytes(key, data, ctype)  # the hung write lands after the answer (and after the gateway's delete)
    leases = leases_for(rclient, settings)
    store = JobStore(rclient, settings)

    def status(job_id: str) -> str | None:
        job = store.get(job_id)
        return None if job is None else str(job.status)

    # within its grace it is kept (the write may still be in flight) ...
    assert reconcile(leases, status, lambda j: None, storage.delete).deleted_inputs == []
    assert storage.head(key) is not None
    # ... past it, no job record names it: deleted
    past = time.time() + settings.input_grace_s + 1
    monkeypatch.setattr(time, "time", lambda: past)
    assert reconcile(leases, status, lambda j: None, storage.delete).deleted_inputs == [key]
    assert storage.head(key) is None
