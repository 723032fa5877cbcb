# ruff: noqa: E402
"""Fixtures of the gateway tests: the real Redis (DB 15, a random key prefix, cleaned up), a real
S3-compatible server (MiniStack with AUTH=true and an IAM user, on a free loopback port), apps and
clients, test images and archives, and a loopback webhook receiver.

Environment: ``VEIL_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from fastapi import FastAPI

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
from fastapi.testclient import TestClient

from api.main import create_app
from service.config import Settings
from service.jobs import JobStore
from service.keys import create_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from apitest import MiB, Receiver, S3Server, Tenant, free_port, wait_until

REDIS_URL = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


# ---- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_prefix() -> str:
    return f"veiltest:{secrets.token_hex(4)}:"


@pytest.fixture(scope="session")
def rclient(redis_prefix: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=5, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL}: {exc}")
    yield r
    for _ in range(100):  # bounded cleanup of every key under the session's prefix
        keys = list(r.scan_iter(match=f"{redis_prefix}*", count=1000))[:1000]
        if not keys:
            break
        r.delete(*keys)
    r.close()


# ---- S3 (MiniStack) ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """MiniStack (``python -m ministack``) with AUTH=true; the app uses an IAM user limited to the test
    bucket, whose signatures MiniStack verifies (root 'test' keys are never verified)."""
    pytest.importorskip("ministack", reason="install the dev extra: pip install -e '.[api,dev]'")
    port = free_port()
    data = tmp_path_factory.mktemp("ministack")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AUTH="true",
        SERVICES="s3,iam",
        GATEWAY_PORT=str(port),
        BIND_HOST="127.0.0.1",
        MINISTACK_HOST="127.0.0.1",
        S3_DATA_DIR=str(data / "s3"),
        LOG_LEVEL="WARNING",
        IOT_MTLS_ENABLED="0",
        SFTP_ENABLED="0",
        TMPDIR=str(data),
    )
    log = (data / "ministack.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ministack"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                return True
            try:
                return httpx.get(f"{endpoint}/_ministack/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(healthy, timeout=30, interval=0.1)
        if proc.poll() is not None:
            pytest.fail(f"ministack exited: {(data / 'ministack.log').read_text()[-2000:]}")
        bucket = f"veil-test-{secrets.token_hex(4)}"
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        iam.create_user(UserName="veil-api")
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": "s3:*",
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
        iam.put_user_policy(UserName="veil-api", PolicyName="veil-bucket", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName="veil-api")["AccessKey"]
        yield S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], bucket, pid=proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


# ---- settings, apps, clients ------------------------------------------------------------------

TEST_LIMITS: dict[str, Any] = {
    "max_request_bytes": 3 * MiB,
    "max_image_bytes": 2 * MiB,
    "max_image_pixels": 1_000_000,
    "max_archive_bytes": 20 * MiB,
    "max_archive_entries": 5,
    "multipart_threshold_bytes": 5 * MiB,
    "multipart_part_bytes": 5 * MiB,
}


@pytest.fixture(scope="session")
def settings(s3_server: S3Server, redis_prefix: str, rclient: redis.Redis) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        redis_prefix=redis_prefix,
        celery_key_prefix=f"{redis_prefix}celery:",
        s3_endpoint_url=s3_server.endpoint,
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=s3_server.secret_key,  # type: ignore[arg-type]
        s3_bucket=s3_server.bucket,
        rate_limit_requests=10_000,
        prefer_wait_max_s=5,
        wait_poll_interval_s=0.05,
        webhook_retry_schedule_s=[0.05, 0.05],
        webhook_timeout_s=2,
        **TEST_LIMITS,
    )


@pytest.fixture(scope="session")
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="session")
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:  # runs the lifespan (bucket, lifecycle)
        yield c


@pytest.fixture()
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """A client of a fresh app with some settings changed."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        c = TestClient(create_app(settings.model_copy(update=overrides)), raise_server_exceptions=False)
        c.__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


@pytest.fixture(scope="session")
def store(settings: Settings, rclient: redis.Redis) -> JobStore:
    return JobStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings)


@pytest.fixture()
def new_tenant(settings: Settings, rclient: redis.Redis) -> Callable[[], Tenant]:
    def make() -> Tenant:
        name = f"t{secrets.token_hex(4)}"
        return Tenant(name, create_key(name, r=rclient, settings=settings))

    return make


@pytest.fixture()
def tenant(new_tenant: Callable[[], Tenant]) -> Tenant:
    return new_tenant()


# ---- webhook receiver -------------------------------------------------------------------------


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    """An HTTP server on 127.0.0.1 recording every request and answering scripted statuses."""
    state = Receiver(url="")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            body = self.rfile.read(min(length, 1_000_000))
            with lock:
                state.requests.append(
                    {"path": self.path, "headers": dict(self.headers.items()), "body": body}
                )
                status = state.responses.pop(0) if state.responses else 200
            self.send_response(status)
            if 300 <= status < 400 and state.redirect_to:
                self.send_header("Location", state.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
