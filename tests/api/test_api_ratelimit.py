"""Sliding-window rate limit in Redis."""

from __future__ import annotations

import secrets

import redis
from apitest import wait_until

from api.ratelimit import RateLimiter
from service.config import Settings


def test_sliding_window(settings: Settings, rclient: redis.Redis) -> None:
    limiter = RateLimiter(
        rclient, settings.model_copy(update={"rate_limit_requests": 3, "rate_limit_window_s": 1.0})
    )
    key = secrets.token_hex(8)
    results = [limiter.hit(key) for _ in range(4)]
    assert [r.allowed for r in results] == [True, True, True, False]
    assert [r.remaining for r in results[:3]] == [2, 1, 0]
    assert results[3].retry_after_s == 1
    assert limiter.hit(secrets.token_hex(8)).allowed  # per key
    # refused hits are not logged: the key is allowed again exactly when its oldest hit leaves the window
    assert wait_until(lambda: limiter.hit(key).allowed, timeout=3.0, interval=0.02)  # the window slid
    assert 0 < rclient.pttl(limiter.keys.ratelimit(key)) <= 1000


def test_disabled(settings: Settings, rclient: redis.Redis) -> None:
    limiter = RateLimiter(rclient, settings.model_copy(update={"rate_limit_requests": 0}))
    assert all(limiter.hit("k").allowed for _ in range(5))
