"""scripts/run_stack.py: its helpers, and the whole stack with the curl session it prints."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from photos import check_phone_result, phone_photo  # tests/photos.py
from stacktest import load_run_stack, running_stack  # tests/stacktest.py (tests/ is on sys.path)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_stack() -> ModuleType:
    return load_run_stack()


def test_weights_check(run_stack: ModuleType, tmp_path: Path) -> None:
    assert not run_stack.shipped_stargan(tmp_path)
    (tmp_path / "g.safetensors").write_bytes(b"x")
    manifest = {"models": [{"name": "c", "forger": "classifier", "role": "classifier", "file": "g.safetensors"},
                           {"name": "s", "forger": "stargan", "file": "g.safetensors", "default": True}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert run_stack.shipped_stargan(tmp_path)
    (tmp_path / "g.safetensors").unlink()
    assert not run_stack.shipped_stargan(tmp_path)


def test_refuses_to_start_without_weights(run_stack: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEIL_CHECKPOINTS", raising=False)
    rc = run_stack.main(["--checkpoints", str(tmp_path), "--data-dir", str(tmp_path / "data")])
    assert rc == 2 and "--tiny-forger" in capsys.readouterr().err


def test_redis_probe_and_ports(run_stack: ModuleType) -> None:
    port = run_stack.free_port()
    assert not run_stack.redis_answers(f"redis://127.0.0.1:{port}/0")
    assert run_stack.port_free(port)


def test_curl_session_is_complete(run_stack: ModuleType) -> None:
    text = run_stack.curl_session("http://127.0.0.1:8000", "veil_sk_abc", Path("/d/face.png"), Path("/d/faces.zip"),
                                  "http://127.0.0.1:9000")
    assert "export VEIL=http://127.0.0.1:8000 HOOKS=http://127.0.0.1:9000 KEY=veil_sk_abc" in text
    for needle in ("-F file=@/d/face.png", "-F file=@/d/faces.zip", "/outputs", "Prefer: wait=30",
                   'Authorization: Bearer $KEY', "unzip -l"):
        assert needle in text


def test_curl_session_shows_the_webhook(run_stack: ModuleType) -> None:
    text = run_stack.curl_session("http://a", "k", Path("/d/face.png"), Path("/d/faces.zip"), "http://127.0.0.1:9")
    assert "HOOKS=http://127.0.0.1:9 " in text
    assert "-F webhook_url=$HOOKS/veil" in text and "$HOOKS/events" in text


@pytest.mark.slow
def test_make_run_and_its_curl_session(tmp_path: Path) -> None:
    """The README's run command brings the stack up; the curl session it prints protects a photo and an
    archive, and the local receiver gets a verified webhook (real Redis, MiniStack, API, Celery workers)."""
    if shutil.which("curl") is None or shutil.which("unzip") is None:
        pytest.skip("curl and unzip are needed to run the printed session")
    with running_stack(tmp_path) as stack:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", stack.session], cwd=tmp_path, capture_output=True,
                              text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert out.count("succeeded") >= 2, out
        assert "PNG image data" in out and "report.json" in out and "report.csv" in out
        assert "('job.completed', True)" in out and "False)" not in out, out
        phone_photo_through_the_api(stack.api_url, stack.key)
    assert stack.returncode == 0


def phone_photo_through_the_api(api: str, key: str) -> None:
    """A 12 MP phone photo, two faces, EXIF-rotated: protected at full size through the API (real workers)."""
    import httpx

    data, upright = phone_photo()
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api, headers=auth, timeout=60) as http:
        r = http.post("/v1/jobs", files={"file": ("IMG_0001.jpg", data, "image/jpeg")}, data={"strength": "low"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        body: dict[str, Any] = {}
        for _ in range(12):  # long polls of at most 30 s each (the stack's cap): bounded
            body = http.get(f"/v1/jobs/{job_id}", headers={"Prefer": "wait=30"}).json()
            if body["status"] in ("succeeded", "failed", "canceled"):
                break
        assert body["status"] == "succeeded", body
        [item] = http.get(f"/v1/jobs/{job_id}/outputs").json()["data"]
        delivered = httpx.get(item["url"], timeout=60).content
    check_phone_result(upright, delivered, body["report"]["photos"][0])


def test_webhook_receiver_verifies_signatures() -> None:
    import httpx
    from standardwebhooks import Webhook

    from service.keys import new_webhook_secret
    from service.webhooks import message, sign

    spec = importlib.util.spec_from_file_location("veil_hooks", REPO / "scripts" / "webhook_receiver.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    secret = new_webhook_secret()
    server = hooks.Receiver(0, secret)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        now = datetime.now(UTC)
        body = message("job.completed", {"id": "job_1"}, now)
        good = sign(secret, "msg_1", now, body)
        Webhook(secret).verify(body, good)  # the same check, done by the library itself
        assert httpx.post(f"{url}/veil", content=body, headers=good, timeout=5).status_code == 204
        forged = sign(new_webhook_secret(), "msg_2", now, body)
        assert httpx.post(f"{url}/veil", content=body, headers=forged, timeout=5).status_code == 401
        events = httpx.get(f"{url}/events", timeout=5).json()
        assert [(e.get("type"), e["verified"]) for e in events] == [("job.completed", True), (None, False)]
        assert events[0]["data"] == {"id": "job_1"}
        assert httpx.get(f"{url}/other", timeout=5).status_code == 404
    finally:
        server.shutdown()
        server.server_close()
