"""/v1/uploads: presigned POST and multipart uploads against MiniStack (which enforces the POST policy,
presigned URL signatures and expiry), then jobs referencing them."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable

import httpx
import redis
from apitest import MiB, S3Server, Tenant, assert_problem, image_bytes, message_for, zip_bytes
from fastapi.testclient import TestClient
from PIL import Image

from service.config import Settings


def post_upload(post: dict, data: bytes, content_type: str) -> httpx.Response:
    return httpx.post(post["url"], data=post["fields"], files={"file": ("f", data, content_type)}, timeout=10)


def test_presigned_post_upload_then_job(
    client: TestClient, tenant: Tenant, settings: Settings, rclient: redis.Redis, s3_server: S3Server
) -> None:
    png = image_bytes(20, 20)
    r = client.post(
        "/v1/uploads",
        headers=tenant.headers,
        json={"filename": "me.png", "content_type": "image/png", "size": len(png)},
    )
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["mode"] == "post" and up["status"] == "pending" and up["multipart"] is None
    assert up["post"]["fields"]["key"] == f"tenants/{tenant.name}/uploads/{up['id']}/me.png"

    # The server enforces the policy: the declared size and type only.
    assert post_upload(up["post"], png + b"x" * 10, "image/png").status_code == 400  # EntityTooLarge
    wrong_type = dict(up["post"], fields={**up["post"]["fields"], "Content-Type": "image/gif"})
    assert post_upload(wrong_type, png, "image/gif").status_code == 403
    assert post_upload(up["post"], png, "image/png").status_code == 204

    # A job referencing the upload (JSON); it is inspected on first use.
    job = client.post(
        "/v1/jobs", headers=tenant.headers, json={"upload_id": up["id"], "method": "anti-forgery"}
    )
    assert job.status_code == 202, job.text
    body = job.json()
    assert body["input"]["upload_id"] == up["id"] and body["input"]["kind"] == "image"
    assert body["eps"] == 0.0157
    msg = message_for(rclient, settings, "gpu", body["id"])
    assert msg is not None
    assert msg["kwargs"]["payload"]["input"]["key"] == up["post"]["fields"]["key"]
    assert msg["kwargs"]["payload"]["core_eps"] == 0.0157 * 255  # Lab units
    assert client.get(f"/v1/uploads/{up['id']}", headers=tenant.headers).json()["status"] == "ready"

    # As a form field too.
    form = client.post("/v1/jobs", headers=tenant.headers, data={"upload_id": up["id"]})
    assert form.status_code == 202 and form.json()["id"] != body["id"]


def test_upload_not_received_and_limits(client: TestClient, tenant: Tenant) -> None:
    r = client.post(
        "/v1/uploads",
        headers=tenant.headers,
        json={"filename": "x.png", "content_type": "image/png", "size": 10},
    )
    up = r.json()
    assert_problem(
        client.post("/v1/jobs", headers=tenant.headers, json={"upload_id": up["id"]}), 409, "conflict"
    )
    too_big = {"filename": "x.png", "content_type": "image/png", "size": 2 * MiB + 1}
    assert_problem(client.post("/v1/uploads", headers=tenant.headers, json=too_big), 413, "too-large")
    bad_type = {"filename": "x.gif", "content_type": "image/gif", "size": 10}
    assert_problem(client.post("/v1/uploads", headers=tenant.headers, json=bad_type), 422, "validation-error")
    unknown = client.post(
        "/v1/jobs", headers=tenant.headers, json={"upload_id": "upl_00000000000000000000000000"}
    )
    assert_problem(unknown, 404, "not-found")


def test_uploaded_garbage_is_rejected_and_deleted(
    client: TestClient, tenant: Tenant, s3_server: S3Server
) -> None:
    data = b"MZ\x90\x00 not an image"
    up = client.post(
        "/v1/uploads",
        headers=tenant.headers,
        json={"filename": "x.png", "content_type": "image/png", "size": len(data)},
    ).json()
    assert post_upload(up["post"], data, "image/png").status_code == 204
    r = client.post(f"/v1/uploads/{up['id']}/complete", headers=tenant.headers, json={})
    assert_problem(r, 415, "unsupported-media-type")
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=up["post"]["fields"]["key"])
    assert listed.get("KeyCount", 0) == 0
    assert client.get(f"/v1/uploads/{up['id']}", headers=tenant.headers).json()["status"] == "failed"
    assert_problem(client.post("/v1/jobs", headers=tenant.headers, json={"upload_id": up["id"]}), 422)


def test_multipart_upload_of_archive_then_job(
    client: TestClient, tenant: Tenant, settings: Settings, rclient: redis.Redis
) -> None:
    # 5 MiB of incompressible padding + images: two parts of the 5 MiB part size.
    archive = zip_bytes(
        {"pad.bin": os.urandom(5 * MiB), "a.png": image_bytes(), "b.webp": image_bytes(fmt="WEBP")}
    )
    r = client.post(
        "/v1/uploads",
        headers=tenant.headers,
        json={"filename": "batch.zip", "content_type": "application/zip", "size": len(archive)},
    )
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["mode"] == "multipart" and up["multipart"]["part_count"] == 2 and up["post"] is None
    part_size = up["multipart"]["part_size"]

    bad = client.post(up["multipart"]["parts_url"], headers=tenant.headers, json={"part_numbers": [3]})
    assert_problem(bad, 422)
    parts = client.post(up["multipart"]["parts_url"], headers=tenant.headers, json={"part_numbers": [1, 2]})
    assert parts.status_code == 200, parts.text
    etags = []
    for part in parts.json()["parts"]:
        n = part["part_number"]
        chunk = archive[(n - 1) * part_size : n * part_size]
        put = httpx.put(part["url"], content=chunk, timeout=30)
        assert put.status_code == 200, put.text
        etags.append({"part_number": n, "etag": put.headers["etag"]})
    tampered = parts.json()["parts"][0]["url"].replace("partNumber=1", "partNumber=2")
    assert httpx.put(tampered, content=b"x", timeout=10).status_code == 403  # signature covers the part

    done = client.post(up["multipart"]["complete_url"], headers=tenant.headers, json={"parts": etags})
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "ready" and done.json()["kind"] == "archive"

    job = client.post("/v1/jobs", headers=tenant.headers, json={"upload_id": up["id"], "forgers": ["attgan"]})
    assert job.status_code == 202, job.text
    msg = message_for(rclient, settings, "io", job.json()["id"])
    assert msg is not None and msg["task"] == "veil.protect_archive"


def test_uploads_are_tenant_scoped(client: TestClient, new_tenant: Callable[[], Tenant]) -> None:
    alice, bob = new_tenant(), new_tenant()
    up = client.post(
        "/v1/uploads",
        headers=alice.headers,
        json={"filename": "a.png", "content_type": "image/png", "size": 9},
    ).json()
    assert_problem(client.get(f"/v1/uploads/{up['id']}", headers=bob.headers), 404)
    assert_problem(client.post("/v1/jobs", headers=bob.headers, json={"upload_id": up["id"]}), 404)
    assert_problem(client.post(f"/v1/uploads/{up['id']}/complete", headers=bob.headers, json={}), 404)


def test_deeply_nested_json_bodies_are_422(client: TestClient, tenant: Tenant) -> None:
    """Every route with a JSON body bounds the nesting before parsing (no RecursionError, no 400/500)."""
    deep = '{"a":' * 5000 + "1" + "}" * 5000
    headers = {**tenant.headers, "content-type": "application/json"}
    for path in ("/v1/uploads", "/v1/uploads/upl_x/parts", "/v1/uploads/upl_x/complete"):
        body = assert_problem(client.post(path, headers=headers, content=deep), 422, "validation-error")
        assert body["errors"][0]["type"] == "json_too_deep", path


def test_booleans_are_strict(client: TestClient, tenant: Tenant) -> None:
    """JSON booleans are true/false only: 0, 1 or "yes" are 422 (0 used to pass as false)."""
    for value in (0, 1, "false", "yes"):
        r = client.post(
            "/v1/uploads",
            headers=tenant.headers,
            json={"filename": "a.png", "content_type": "image/png", "size": 10, "multipart": value},
        )
        body = assert_problem(r, 422, "validation-error")
        assert body["errors"][0]["loc"] == ["multipart"], body
    for field in ("previews", "keep_metadata"):
        r = client.post("/v1/jobs", headers=tenant.headers, json={"upload_id": "upl_nothere", field: 0})
        body = assert_problem(r, 422, "validation-error")
        assert body["errors"][0]["loc"] == [field], body


def test_largest_complete_body_the_schema_allows_fits_the_body_limit(client: TestClient, tenant: Tenant) -> None:
    """The schema allows 10,000 parts: a body of 10,000 parts with the longest ETags, pretty-printed, gets
    past the body limit (to the 404 of an unknown upload) instead of a 413."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    max_parts = schemas["CompleteRequest"]["properties"]["parts"]["maxItems"]
    part = schemas["CompletedPart"]["properties"]
    etag = '"' + "f" * (part["etag"]["maxLength"] - 2) + '"'
    parts = [{"part_number": part["part_number"]["maximum"], "etag": etag}] * max_parts
    raw = json.dumps({"parts": parts}, indent=2)
    assert len(raw) > 1 * MiB  # over the general JSON body limit
    r = client.post(
        "/v1/uploads/upl_nothere/complete",
        headers={**tenant.headers, "content-type": "application/json"},
        content=raw,
    )
    assert_problem(r, 404, "not-found")
    too_many = json.dumps({"parts": parts + parts[:1]})
    r = client.post(
        "/v1/uploads/upl_nothere/complete",
        headers={**tenant.headers, "content-type": "application/json"},
        content=too_many,
    )
    assert_problem(r, 422, "validation-error")


def test_an_upload_replaced_after_its_check_is_refused(
    client: TestClient, tenant: Tenant, settings: Settings, rclient: redis.Redis
) -> None:
    """D6: the presigned POST stays valid after the check; posting again replaces the object. A job on the
    upload then answers 409, and a job created before the replacement reads the checked version only."""
    first = image_bytes(20, 20)
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(buf, "PNG")
    second = buf.getvalue()
    assert first != second and len(second) <= len(first)  # within the upload's declared size
    up = client.post("/v1/uploads", headers=tenant.headers,
                     json={"filename": "me.png", "content_type": "image/png", "size": len(first)}).json()
    assert post_upload(up["post"], first, "image/png").status_code == 204
    job = client.post("/v1/jobs", headers=tenant.headers, json={"upload_id": up["id"]})
    assert job.status_code == 202, job.text
    payload = message_for(rclient, settings, "gpu", job.json()["id"])["kwargs"]["payload"]
    checked = payload["input"]["etag"]
    assert checked  # the version the gateway checked, which the worker reads with IfMatch
    assert post_upload(up["post"], second, "image/png").status_code == 204  # still valid: replaced
    again = client.post("/v1/jobs", headers=tenant.headers, json={"upload_id": up["id"]})
    assert_problem(again, 409, "conflict")
    assert "replaced after it was checked" in again.json()["detail"]
