"""Helpers of the gateway tests (imported by the tests and conftest)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import signal
import socket
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import httpx
import redis
from botocore.config import Config
from PIL import Image

from service.config import Settings

MiB = 1024 * 1024
PROBLEM = "application/problem+json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy; bounded in time and count. Returns its last value."""
    deadline = time.monotonic() + timeout
    value = None
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value or time.monotonic() > deadline:
            break
        time.sleep(interval)
    return value


# ---- payloads ---------------------------------------------------------------------------------


def image_bytes(width: int = 32, height: int = 24, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 80, 60)).save(buf, fmt)
    return buf.getvalue()


def zip_bytes(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def celery_messages(r: redis.Redis, settings: Settings, queue: str) -> list[dict[str, Any]]:
    """Decoded Celery (protocol 2, JSON) messages waiting in a queue of the test broker."""
    out = []
    for raw in r.lrange(f"{settings.celery_key_prefix}{queue}", 0, -1):
        msg = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
        out.append(
            {
                "task": msg["headers"]["task"],
                "id": msg["headers"]["id"],
                "args": args,
                "kwargs": kwargs,
                "routing_key": msg["properties"]["delivery_info"]["routing_key"],
            }
        )
    return out


def message_for(r: redis.Redis, settings: Settings, queue: str, job_id: str) -> dict[str, Any] | None:
    return next((m for m in celery_messages(r, settings, queue) if m["id"] == job_id), None)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    pid: int | None = None  # the server process (chaos tests freeze it)

    @contextlib.contextmanager
    def frozen(self, seconds: float) -> Iterator[None]:
        """SIGSTOP the server for ``seconds`` (bounded: it is resumed whatever happens)."""
        assert self.pid is not None
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
            time.sleep(seconds)
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )


@dataclass
class Tenant:
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Receiver:
    url: str
    responses: list[int] = field(default_factory=list)  # status per request; 200 when exhausted
    requests: list[dict[str, Any]] = field(default_factory=list)
    redirect_to: str | None = None


def assert_problem(r: httpx.Response, status: int, slug: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["title"] and "type" in body and body["instance"]
    if slug:
        assert body["type"] == f"/problems/{slug}"
    return body
