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


def consumers(r: redis.Redis, settings: Settings, limit: int = 100) -> dict[str, list[str]]:
    """Per queue the service uses (gpu, io), the live workers whose heartbeat says they consume it."""
    keys = RedisKeys(settings.redis_prefix)
    names = live_workers(r, settings, limit)
    values = r.mget([keys.worker(n) for n in names]) if names else []
    out: dict[str, list[str]] = {settings.queue_gpu: [], settings.queue_io: []}
    for name, raw in zip(names, values, strict=True):
        if raw is None:  # expired between the scan and the read
            continue
        try:
            queues = json.loads(raw).get("queues", [])
        except (ValueError, AttributeError):
            continue
        for queue in queues:
            if queue in out:
                out[queue].append(name)
    return out
