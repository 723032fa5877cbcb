# ruff: noqa: E402
"""Fixtures of the worker tests: the gateway tests' real Redis (DB 15, own prefix, cleaned up), MiniStack
(AUTH=true, an IAM user) and webhook receiver (reused from tests/api/conftest.py), a tiny random forger
checkpoint, the gateway under uvicorn, and real Celery worker subprocesses (gpu and io, ``--pool=solo``)."""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "api"))

from apitest import S3Server, Tenant
from workertest import ApiServer, WorkerProc, start_worker, wait_ready

from api.main import create_app
from service.config import Settings
from service.jobs import JobStore
from service.keys import create_key
from service.redisdb import make_redis
from service.storage import Storage
from worker.config import WorkerSettings, to_env


def _load_api_conftest() -> Any:
    """tests/api/conftest.py under its own module name (both folders have a conftest.py)."""
    spec = importlib.util.spec_from_file_location("veil_api_conftest", HERE.parent / "api" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_api = _load_api_conftest()
redis_prefix = _api.redis_prefix
rclient = _api.rclient
s3_server = _api.s3_server
receiver = _api.receiver
REDIS_URL = _api.REDIS_URL


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoints folder whose default stargan is a tiny random network (for the worker processes)."""
    from core.workflows import write_tiny_checkpoints

    return write_tiny_checkpoints(tmp_path_factory.mktemp("checkpoints"))


WORKER_TEST_SETTINGS: dict[str, Any] = {
    "max_request_bytes": 4 * 1024 * 1024,
    "max_image_bytes": 1024 * 1024,
    "max_image_pixels": 1_000_000,
    "max_archive_bytes": 8 * 1024 * 1024,
    "max_archive_entries": 64,
    "max_archive_uncompressed_bytes": 16 * 1024 * 1024,
    "rate_limit_requests": 10_000,
    "prefer_wait_max_s": 5,
    "wait_poll_interval_s": 0.05,
    "webhook_allow_hosts": ["127.0.0.1"],
    "webhook_require_https": False,
    "webhook_retry_schedule_s": [0.2, 0.2],
    "webhook_timeout_s": 2,
    "worker_heartbeat_ttl_s": 6,
    "task_max_deliveries": 2,
    "task_transient_retries": 1,
    "task_retry_backoff_s": 0.2,
    "worker_soft_shutdown_timeout_s": 2,
    "archive_group_size": 4,
    "protect_batch_size": 2,
    "progress_webhook_interval_s": 0.3,
}


@pytest.fixture(scope="session")
def wsettings(s3_server: S3Server, redis_prefix: str, rclient: redis.Redis) -> WorkerSettings:
    prefix = f"{redis_prefix}w:"
    return WorkerSettings(
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        celery_key_prefix=f"{prefix}celery:",
        s3_endpoint_url=s3_server.endpoint,
        s3_access_key_id=s3_server.access_key,
        s3_secret_access_key=SecretStr(s3_server.secret_key),
        s3_bucket=s3_server.bucket,
        **WORKER_TEST_SETTINGS,
    )


@pytest.fixture(scope="session")
def api_settings(wsettings: WorkerSettings) -> Settings:
    """The gateway's view of the same settings (no worker fields)."""
    return Settings(**{k: getattr(wsettings, k) for k in Settings.model_fields})


@pytest.fixture(scope="session")
def storage(wsettings: WorkerSettings) -> Storage:
    s = Storage(wsettings)
    s.ensure_bucket()
    return s


@pytest.fixture(scope="session")
def wstore(wsettings: WorkerSettings, rclient: redis.Redis) -> JobStore:
    return JobStore(make_redis(wsettings), wsettings)


@pytest.fixture(scope="session")
def worker_env(wsettings: WorkerSettings, tiny_checkpoints: Path) -> dict[str, str]:
    return {**to_env(wsettings), "VEIL_CHECKPOINTS": str(tiny_checkpoints)}


@pytest.fixture(scope="session")
def workers(
    worker_env: dict[str, str],
    wsettings: WorkerSettings,
    rclient: redis.Redis,
    storage: Storage,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, WorkerProc]]:
    """One gpu worker and one io worker (``--pool=solo``), ready (heartbeat written) before the tests."""
    logs = tmp_path_factory.mktemp("worker-logs")
    procs = {"gpu": start_worker("gpu", worker_env, logs), "io": start_worker("io", worker_env, logs)}
    try:
        wait_ready(rclient, wsettings, list(procs.values()))
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()
        if os.environ.get("VEIL_TEST_SHOW_WORKER_LOGS"):
            for proc in procs.values():
                print(f"---- {proc.name}\n{proc.tail(20000)}")


@pytest.fixture(scope="session")
def api_url(api_settings: Settings, storage: Storage) -> Iterator[str]:
    server = ApiServer(create_app(api_settings))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture()
def tenant(wsettings: WorkerSettings, rclient: redis.Redis) -> Tenant:
    name = f"t{secrets.token_hex(4)}"
    return Tenant(name, create_key(name, r=make_redis(wsettings), settings=wsettings))


@pytest.fixture()
def secret_of(wsettings: WorkerSettings) -> Callable[[str], str]:
    from service.keys import get_webhook_secret

    def get(tenant: str) -> str:
        value = get_webhook_secret(tenant, r=make_redis(wsettings), settings=wsettings)
        assert value is not None
        return value

    return get
