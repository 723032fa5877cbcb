"""Chaos: the broker restarted under a worker holding unacknowledged messages.

A Redis of its own (``redis-server`` on a free port, append-only so that its data survives the restart),
an io worker on it, a webhook delivery reserved with a countdown (unacknowledged until it is due, as every
retry of a failing receiver is), then Redis restarted. The worker must still be alive and consuming.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from apitest import free_port
from workertest import WorkerProc, start_worker, wait_for, wait_ready

from service.heartbeat import live_workers
from service.queue import TASK_DELIVER_WEBHOOK, make_celery, queue_depth
from worker.config import WorkerSettings, to_env

pytestmark = pytest.mark.slow


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--appendonly", "yes", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        assert wait_for(lambda: _pings(client), timeout=10), "redis-server did not start"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes its append-only file and exits
            self.proc.wait(timeout=10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture()
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_io_worker_survives_a_broker_restart_with_unacked_messages(
    own_redis: RedisServer, wsettings: WorkerSettings, worker_env: dict[str, str], tmp_path: Path
) -> None:
    settings = wsettings.model_copy(update={"redis_url": own_redis.url, "celery_broker_url": None})
    client = redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=2)
    proc: WorkerProc = start_worker("io", {**worker_env, **to_env(settings)}, tmp_path, pool="threads",
                                    extra=("-c", "2"))
    try:
        wait_ready(client, settings, [proc])
        celery = make_celery(settings)
        # reserved until due: unacknowledged in the broker meanwhile
        celery.send_task(TASK_DELIVER_WEBHOOK, args=["job-none", "job.succeeded", {}, "msg-1"], queue="io",
                         countdown=60)
        unacked = f"{settings.celery_key_prefix}unacked"
        assert wait_for(lambda: client.hlen(unacked) > 0, timeout=15), proc.tail()
        own_redis.stop()
        time.sleep(2)
        own_redis.start()
        time.sleep(8)  # the worker notices and reconnects (or, before the fix, dies)
        assert proc.proc.poll() is None, f"the io worker died:\n{proc.tail(6000)}"
        celery = make_celery(settings)
        celery.send_task(TASK_DELIVER_WEBHOOK, args=["job-none", "job.succeeded", {}, "msg-2"], queue="io")
        assert wait_for(lambda: queue_depth(client, settings, "io") == 0, timeout=20), proc.tail(6000)
        # its heartbeat is back (so /readyz sees the io queue consumed), and the held message was not lost:
        # it waits in the broker's unacknowledged set for the visibility timeout
        assert wait_for(lambda: live_workers(client, settings), timeout=10)
        assert client.hlen(unacked) >= 1
    finally:
        proc.stop()
