"""API keys (stored as sha256 in Redis with their tenant) and per-tenant webhook secrets.

``python -m service.keys create --tenant T`` prints a new key (and, for a tenant's first key, its webhook
signing secret on stderr); ``python -m service.keys secret --tenant T`` prints the secret;
``python -m service.keys revoke KEY`` revokes a key. The ``veil keys create`` CLI calls :func:`create_key`.
"""

from __future__ import annotations

import argparse
import base64
import re
import secrets
import sys
import time
from dataclasses import dataclass

import redis

from service.config import Settings, get_settings
from service.redisdb import RedisKeys, make_redis, sha256_hex

KEY_PREFIX = "veil_sk_"
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and the key's id (its sha256, used for rate limiting)."""

    tenant: str
    key_id: str


def validate_tenant(tenant: str) -> str:
    if not TENANT_RE.match(tenant):
        raise ValueError("tenant must match [a-z0-9][a-z0-9_-]{0,62} (it becomes part of storage keys)")
    return tenant


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _client(r: redis.Redis | None, settings: Settings | None) -> tuple[redis.Redis, Settings]:
    settings = settings or get_settings()
    return (r if r is not None else make_redis(settings)), settings


def create_key(tenant: str, *, r: redis.Redis | None = None, settings: Settings | None = None) -> str:
    """Create an API key for ``tenant`` and return it (it is shown once: only its sha256 is kept).

    The tenant's webhook secret is created with its first key.
    """
    validate_tenant(tenant)
    r, settings = _client(r, settings)
    keys = RedisKeys(settings.redis_prefix)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    digest = sha256_hex(key)
    now = str(time.time())
    with r.pipeline(transaction=True) as pipe:
        pipe.hset(keys.apikey(digest), mapping={"tenant": tenant, "created_at": now, "hint": key[-4:]})
        pipe.sadd(keys.tenant_keys(tenant), digest)
        pipe.hsetnx(keys.tenant(tenant), "webhook_secret", new_webhook_secret())
        pipe.hsetnx(keys.tenant(tenant), "created_at", now)
        pipe.execute()
    return key


def lookup_key(key: str, *, r: redis.Redis, settings: Settings) -> Principal | None:
    """The principal of a presented key, or None when it is unknown or revoked."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    digest = sha256_hex(key)
    tenant = r.hget(RedisKeys(settings.redis_prefix).apikey(digest), "tenant")
    return Principal(tenant=str(tenant), key_id=digest) if tenant else None


def revoke_key(key: str, *, r: redis.Redis | None = None, settings: Settings | None = None) -> bool:
    r, settings = _client(r, settings)
    keys = RedisKeys(settings.redis_prefix)
    digest = sha256_hex(key)
    tenant = r.hget(keys.apikey(digest), "tenant")
    if not tenant:
        return False
    with r.pipeline(transaction=True) as pipe:
        pipe.delete(keys.apikey(digest))
        pipe.srem(keys.tenant_keys(str(tenant)), digest)
        pipe.execute()
    return True


def get_webhook_secret(
    tenant: str, *, r: redis.Redis | None = None, settings: Settings | None = None
) -> str | None:
    r, settings = _client(r, settings)
    value = r.hget(RedisKeys(settings.redis_prefix).tenant(tenant), "webhook_secret")
    return str(value) if value else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.keys", description="Manage Veil API keys.")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key and print it")
    create.add_argument("--tenant", required=True)
    secret = sub.add_parser("secret", help="print the tenant's webhook signing secret")
    secret.add_argument("--tenant", required=True)
    revoke = sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":
            first = get_webhook_secret(args.tenant) is None
            print(create_key(args.tenant))
            if first:
                print(f"webhook secret: {get_webhook_secret(args.tenant)}", file=sys.stderr)
        elif args.command == "secret":
            value = get_webhook_secret(args.tenant)
            if value is None:
                print(f"no such tenant: {args.tenant}", file=sys.stderr)
                return 1
            print(value)
        else:
            if not revoke_key(args.key):
                print("no such key", file=sys.stderr)
                return 1
    except (ValueError, redis.RedisError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
