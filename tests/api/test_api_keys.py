"""API keys and tenant webhook secrets in Redis; the ``python -m service.keys`` CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from service.config import Settings
from service.keys import create_key, get_webhook_secret, lookup_key, revoke_key


def test_keys_are_stored_hashed_with_their_tenant(settings: Settings, rclient: redis.Redis) -> None:
    key = create_key("acme", r=rclient, settings=settings)
    assert key.startswith("veil_sk_") and len(key) > 40
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert rclient.hget(f"{settings.redis_prefix}apikey:{digest}", "tenant") == "acme"
    dump = [
        v
        for k in rclient.scan_iter(match=f"{settings.redis_prefix}*", count=1000)
        if rclient.type(k) == "hash"
        for v in rclient.hgetall(k).values()
    ]
    assert key not in dump  # never in clear
    principal = lookup_key(key, r=rclient, settings=settings)
    assert principal is not None and principal.tenant == "acme" and principal.key_id == digest
    assert lookup_key(key + "x", r=rclient, settings=settings) is None


def test_webhook_secret_created_with_first_key_only(settings: Settings, rclient: redis.Redis) -> None:
    create_key("first", r=rclient, settings=settings)
    secret = get_webhook_secret("first", r=rclient, settings=settings)
    assert secret is not None and secret.startswith("whsec_")
    create_key("first", r=rclient, settings=settings)
    assert get_webhook_secret("first", r=rclient, settings=settings) == secret


def test_revoke_and_tenant_names(settings: Settings, rclient: redis.Redis) -> None:
    key = create_key("gone", r=rclient, settings=settings)
    assert revoke_key(key, r=rclient, settings=settings)
    assert lookup_key(key, r=rclient, settings=settings) is None
    assert not revoke_key(key, r=rclient, settings=settings)
    for bad in ["", "UPPER", "a/b", "x" * 64, "../t"]:
        with pytest.raises(ValueError):
            create_key(bad, r=rclient, settings=settings)


def test_cli_create_prints_a_working_key(settings: Settings, rclient: redis.Redis, repo_root: Path) -> None:
    env = {**os.environ, "VEIL_REDIS_URL": settings.redis_url, "VEIL_REDIS_PREFIX": settings.redis_prefix}
    out = subprocess.run(
        [sys.executable, "-m", "service.keys", "create", "--tenant", "cli-t"],
        env=env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = out.stdout.strip()
    assert "whsec_" in out.stderr
    principal = lookup_key(key, r=rclient, settings=settings)
    assert principal is not None and principal.tenant == "cli-t"
    secret = subprocess.run(
        [sys.executable, "-m", "service.keys", "secret", "--tenant", "cli-t"],
        env=env,
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert secret.stdout.strip() == get_webhook_secret("cli-t", r=rclient, settings=settings)
