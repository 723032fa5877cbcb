"""Container healthcheck: exit 0 when this worker's heartbeat (``<prefix>workers:<name>``) is live.

``python -m worker.healthcheck gpu@$HOSTNAME`` (the ``-n`` name the worker was started with).
"""

from __future__ import annotations

import sys

import redis

from service.redisdb import RedisKeys, make_redis
from worker.config import get_worker_settings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.healthcheck NODENAME", file=sys.stderr)
        return 2
    settings = get_worker_settings()
    try:
        alive = bool(make_redis(settings).exists(RedisKeys(settings.redis_prefix).worker(args[0])))
    except redis.RedisError as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return 1
    if not alive:
        print(f"no heartbeat for {args[0]}", file=sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    raise SystemExit(main())
