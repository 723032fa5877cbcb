"""scripts/run_stack.py: its helpers, and the whole stack with the curl session it prints."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
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


# ---- #13: the dev stack's supervision, isolation, secrets and persistence --------------------------------


def test_a_dead_process_is_restarted_not_the_whole_stack(run_stack: ModuleType, tmp_path: Path) -> None:
    stack = run_stack.Stack(tmp_path)
    marker = tmp_path / "crashed-once"
    code = ("import pathlib, sys, time; m = pathlib.Path(sys.argv[1])\n"
            "if not m.exists(): m.touch(); sys.exit(3)\n"
            "time.sleep(60)")
    try:
        steady = stack.spawn("steady", [sys.executable, "-c", "import time; time.sleep(60)"], {})
        flaky = stack.spawn("flaky", [sys.executable, "-c", code, str(marker)], {})
        first_pid, steady_pid = flaky.proc.pid, steady.proc.pid
        assert stack.supervise(max_restarts=3, interval=0.1, max_rounds=30, until=lambda: flaky.restarts == 1) is None
        assert flaky.restarts == 1 and flaky.proc.pid != first_pid and flaky.alive()
        assert steady.proc.pid == steady_pid and steady.alive() and steady.restarts == 0
        assert "restarting" in (tmp_path / "logs" / "flaky.log").read_text()
        # One that keeps dying is given up on after its restarts: then the stack stops.
        doomed = stack.spawn("doomed", [sys.executable, "-c", "raise SystemExit(4)"], {})
        assert stack.supervise(max_restarts=2, interval=0.05, max_rounds=200, backoff_s=0.05) is doomed
        assert doomed.restarts == 2 and steady.alive()
    finally:
        stack.stop(timeout=10)


def test_each_stack_has_its_own_keys_and_queues(run_stack: ModuleType, tmp_path: Path) -> None:
    """Two stacks on one Redis: their own key prefix and Celery key prefix (the workers take only their
    stack's tasks), and an allow-list of exactly their receiver's host:port."""
    from service.config import Settings

    envs = []
    for name in ("a", "b"):
        args = run_stack.parse_args(["--data-dir", str(tmp_path / name)])
        envs.append(run_stack.service_env(args, tmp_path / name, "redis://127.0.0.1:6379/0",
                                          ("http://127.0.0.1:1", "AKIA", "s3cret"), hooks_port=9123))
    settings = [Settings(**{k.removeprefix("VEIL_").lower(): v for k, v in env.items()
                            if k.startswith("VEIL_")}) for env in envs]
    assert settings[0].redis_prefix != settings[1].redis_prefix
    for s in settings:
        assert s.celery_key_prefix == f"{s.redis_prefix}celery:"
        assert s.webhook_allow_hosts == ["127.0.0.1:9123"]
    # the same data dir (a restarted stack): the same prefix, its jobs and keys found again
    again = run_stack.service_env(run_stack.parse_args(["--data-dir", str(tmp_path / "a")]), tmp_path / "a",
                                  "redis://127.0.0.1:6379/0", ("http://127.0.0.1:1", "AKIA", "s3cret"), hooks_port=1)
    assert again["VEIL_REDIS_PREFIX"] == envs[0]["VEIL_REDIS_PREFIX"]
    explicit = run_stack.parse_args(["--redis-prefix", "mine:"])
    assert run_stack.service_env(explicit, tmp_path, "redis://x", ("e", "a", "s"), 1)["VEIL_CELERY_KEY_PREFIX"] == (
        "mine:celery:")


def test_the_webhook_secret_is_not_on_a_command_line(run_stack: ModuleType, tmp_path: Path) -> None:
    import httpx

    from service.keys import new_webhook_secret
    from service.webhooks import message, sign

    secret = new_webhook_secret()
    stack = run_stack.Stack(tmp_path)
    try:
        url = run_stack.start_receiver(stack, secret, run_stack.free_port())
        [child] = stack.children
        cmdline = Path(f"/proc/{child.proc.pid}/cmdline").read_bytes().decode()
        assert secret not in cmdline and secret.removeprefix("whsec_") not in cmdline
        now = datetime.now(UTC)
        body = message("job.completed", {"id": "job_1"}, now)
        r = httpx.post(f"{url}/veil", content=body, headers=sign(secret, "m1", now, body), timeout=5)
        assert r.status_code == 204
    finally:
        stack.stop(timeout=10)


@pytest.mark.slow
def test_ministack_keeps_its_data_in_the_data_dir(run_stack: ModuleType, tmp_path: Path) -> None:
    """--data-dir: MiniStack's objects (and its IAM user) survive a restart of the stack."""
    import boto3

    def s3(endpoint: str, key: str, secret: str) -> Any:
        return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret)

    port = run_stack.free_port()
    stack = run_stack.Stack(tmp_path)
    try:
        endpoint, key, secret = run_stack.start_s3(stack, port, persist=True)
        client = s3(endpoint, key, secret)
        client.create_bucket(Bucket=run_stack.BUCKET)
        client.put_object(Bucket=run_stack.BUCKET, Key="kept.txt", Body=b"still here")
    finally:
        stack.stop(timeout=20)
    stack = run_stack.Stack(tmp_path)
    try:
        endpoint, key, secret = run_stack.start_s3(stack, port, persist=True)
        body = s3(endpoint, key, secret).get_object(Bucket=run_stack.BUCKET, Key="kept.txt")["Body"].read()
        assert body == b"still here"
    finally:
        stack.stop(timeout=20)


def test_printed_session_polls_until_the_job_ends(run_stack: ModuleType, tmp_path: Path) -> None:
    """The session long-polls in a bounded loop (an archive takes longer than one Prefer: wait=30): run its
    wait_job function against a scripted API whose job runs for three polls."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    polls: list[str | None] = []
    finish_after = {"job_done": 3, "job_never": 10_000}

    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            job = self.path.rsplit("/", 1)[-1]
            polls.append(self.headers.get("prefer"))
            n = sum(1 for _ in polls)
            status = "succeeded" if n > finish_after.get(job, 0) else "running"
            body = json.dumps({"id": job, "status": status, "report": {"photos": n}}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    session = run_stack.curl_session(api, "k", Path("/d/face.png"), Path("/d/faces.zip"), "http://127.0.0.1:9")
    func = session[session.index("wait_job() {"):]
    func = func[: func.index("\n}\n") + 3]
    try:
        def wait(job: str) -> str:
            polls.clear()
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", f"{func}\nwait_job {job}"], capture_output=True,
                                  text=True, timeout=60, env={"PATH": os.environ["PATH"], "VEIL": api, "KEY": "k"})
            assert done.returncode == 0, done.stderr
            return done.stdout

        assert "succeeded" in wait("job_done") and len(polls) == 5  # 4 long-polls, then the report
        assert all(p and p.startswith("wait=") for p in polls[:4])
        out = wait("job_never")  # bounded: gives up after its tries, showing the last status
        assert "running" in out and len(polls) == run_stack.WAIT_TRIES + 1
    finally:
        server.shutdown()
        server.server_close()
