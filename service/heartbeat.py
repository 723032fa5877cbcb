"""Worker heartbeats: ``<prefix>workers:<hostname>`` = JSON info, expiring after ``worker_heartbeat_ttl_s``.

A worker calls :func:`beat` at start and then every ``ttl / 3`` seconds (e.g. from a thread started on
Celery's ``worker_ready`` signal), and :func:`retire` on shutdown. ``/readyz`` needs at least one live key.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from typing import Any

import redis

from service.config import Settings
from service.redisdb import RedisKeys


def beat(
    r: redis.Redis,
    settings: Settings,
    hostname: str | None = None,
    queues: Sequence[str] = (),
    **info: Any,
) -> str:
    hostname = hostname or socket.gethostname()
    value = json.dumps({"hostname": hostname, "queues": list(queues), "at": time.time(), **info})
    key = RedisKeys(settings.redis_prefix).worker(hostname)
    r.set(key, value, ex=settings.worker_heartbeat_ttl_s)
    return key


def retire(r: redis.Redis, settings: Settings, hostname: str | None = None) -> None:
    r.delete(RedisKeys(settings.redis_prefix).worker(hostname or socket.gethostname()))


def live_workers(r: redis.Redis, settings: Settings, limit: int = 100) -> list[str]:
    """Hostnames with a live heartbeat (bounded SCAN)."""
    keys = RedisKeys(settings.redis_prefix)
    found: list[str] = []
    cursor: int = 0
    for _ in range(50):
        cursor, batch = r.scan(cursor=cursor, match=keys.workers_pattern(), count=500)
        found += [str(k)[len(keys.worker("")) :] for k in batch]
        if cursor == 0 or len(found) >= limit:
            break
    return found[:limit]
