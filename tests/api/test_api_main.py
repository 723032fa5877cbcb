"""The app as a whole: the no-torch rule, OpenAPI docs, and a real uvicorn server on loopback."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from apitest import PROBLEM, Tenant, assert_problem, free_port, image_bytes, wait_until
from fastapi.testclient import TestClient

from api.main import create_app
from service.config import Settings


def test_api_never_imports_torch_or_core(repo_root: Path) -> None:
    code = (
        "import sys, api.main, service.jobs, service.storage, service.webhooks, service.config, service.queue, "
        "service.keys; "
        # of core, only the report contract (pydantic only), which the job view types the report with
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'core.')) and m != 'core.report']; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=repo_root, check=True, timeout=120)


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/outputs",
        "/v1/uploads",
        "/v1/methods",
        "/healthz",
        "/readyz",
        "/metrics",
    } <= set(spec["paths"])
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_openapi_publishes_the_worker_contract(client: TestClient) -> None:
    """The task payload and the resolved options (service.contract) are in components.schemas."""
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    payload = schemas["TaskPayload"]["properties"]
    assert {"v", "job_id", "kind", "method", "core_eps", "escalation", "keep_metadata", "input", "webhook"} <= set(
        payload
    )
    assert payload["input"] == {"$ref": "#/components/schemas/InputRef"} and "InputRef" in schemas
    resolved = set(schemas["ResolvedOptions"]["properties"])
    assert {"webhook_url", "webhook_events", "metadata", "keep_metadata"} <= resolved
    # one eps maximum: the request schema's and the catalogue's
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    eps = body["properties"]["eps"]["anyOf"][0]
    assert eps["maximum"] == client.get("/v1/methods").json()["eps_max"] == 0.1


def test_openapi_types_the_job_report(client: TestClient) -> None:
    """The job's report is typed by the report contract (core/report.py), published in components.schemas."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    job = next(v for k, v in schemas.items() if k.startswith("Job") and "report" in v.get("properties", {}))
    assert {"$ref": "#/components/schemas/JobReport"} in job["properties"]["report"]["anyOf"]
    assert {"JobReport", "PhotoEntry", "PhotoError", "FaceReport", "Receipt", "ConditionResult",
            "ForgerNumbers"} <= set(schemas)
    assert {"name", "psnr", "lpips", "lpips_available", "receipt", "faces"} <= set(schemas["PhotoEntry"]["properties"])


@pytest.fixture()
def live_server(settings: Settings) -> Iterator[str]:
    app = create_app(settings.model_copy(update={"max_request_bytes": 100_000}))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started, timeout=10)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_real_server_round_trip(live_server: str, tenant: Tenant) -> None:
    with httpx.Client(base_url=live_server, timeout=10) as http:
        r = http.post("/v1/jobs", headers=tenant.headers, files={"file": ("a.jpg", image_bytes(fmt="JPEG"))})
        assert r.status_code == 202, r.text
        job = http.get(r.headers["location"], headers=tenant.headers).json()
        assert job["status"] == "queued" and job["input"]["content_type"] == "image/jpeg"
        assert http.get("/healthz").json() == {"status": "ok"}

        # No Content-Length (chunked): the byte count is enforced while the body streams in.
        def chunks() -> Iterator[bytes]:
            boundary = b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            yield boundary + b"\x89PNG\r\n\x1a\n"
            for _ in range(15):
                yield b"\0" * 10_000
            yield b"\r\n--xx--\r\n"

        start = time.monotonic()
        r = http.post(
            "/v1/jobs",
            headers={**tenant.headers, "content-type": "multipart/form-data; boundary=xx"},
            content=chunks(),
        )
        assert "content-length" not in r.request.headers
        body = assert_problem(r, 413, "too-large")
        assert "limit" in body["detail"] and time.monotonic() - start < 5


def test_deeply_nested_json_keeps_the_connection(live_server: str, tenant: Tenant) -> None:
    """A JSON body nested 5,000 deep is a 422 problem on a kept-alive connection (it was an uncaught
    RecursionError: a 500 and a dropped connection)."""
    host, port = live_server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        deep = ('{"a":' * 5000 + "1" + "}" * 5000).encode()
        headers = {**tenant.headers, "Content-Type": "application/json"}
        conn.request("POST", "/v1/jobs", body=deep, headers=headers)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 422 and body["type"] == "/problems/validation-error", body
        assert resp.getheader("connection") != "close" and conn.sock is not None
        sock = conn.sock
        conn.request("GET", "/healthz")
        again = conn.getresponse()
        assert again.status == 200 and json.loads(again.read()) == {"status": "ok"}
        assert conn.sock is sock  # the same connection answered
    finally:
        conn.close()


def test_openapi_documents_400_on_every_operation(client: TestClient) -> None:
    """A bad Content-Length or an unparsable body is a 400 problem on any route: documented."""
    spec = client.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert "400" in op["responses"], f"{method.upper()} {path}"
            assert PROBLEM in op["responses"]["400"]["content"], f"{method.upper()} {path}"
    assert "/problems/bad-request" in spec["info"]["description"]


def test_405_lists_every_method_of_the_path(client: TestClient, tenant: Tenant) -> None:
    r = client.put("/v1/jobs", headers=tenant.headers)
    assert_problem(r, 405)
    assert set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    r = client.delete("/v1/jobs/job_00000000000000000000000000", headers=tenant.headers)
    assert_problem(r, 405)
    assert r.headers["allow"].replace(" ", "").split(",") == ["GET"]
