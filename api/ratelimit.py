"""Per-key sliding-window rate limit (a log of request times in a Redis sorted set, Redis clock)."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import redis

from service.config import Settings
from service.redisdb import RedisKeys

# KEYS[1] zset; ARGV[1] window ms, ARGV[2] limit, ARGV[3] unique member suffix.
_SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, now .. '-' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - n - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True)
class RateLimitResult:
    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int  # whole seconds (>= 1) when refused, else 0


class RateLimiter:
    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.settings = settings
        self.keys = RedisKeys(settings.redis_prefix)
        self._script = r.register_script(_SLIDING_WINDOW_LUA)

    def hit(self, key_id: str) -> RateLimitResult:
        limit = self.settings.rate_limit_requests
        if limit <= 0:
            return RateLimitResult(True, 0, 0, 0)
        window_ms = max(1, int(self.settings.rate_limit_window_s * 1000))
        allowed, remaining, retry_ms = self._script(
            keys=[self.keys.ratelimit(key_id)], args=[window_ms, limit, secrets.token_hex(4)]
        )
        if allowed:
            return RateLimitResult(True, limit, int(remaining), 0)
        return RateLimitResult(False, limit, 0, max(1, math.ceil(int(retry_ms) / 1000)))
