"""The Redis client factory, the key layout and time-ordered ids (shared with the workers).

Every key starts with ``Settings.redis_prefix`` (default ``veil:``); see :class:`RedisKeys`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time

import redis

from service.config import Settings

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"  # ascending in ASCII: ids sort by time
ID_RE = re.compile(r"^[a-z]{3}_[0-9a-z]{26}$")


def new_id(kind: str) -> str:
    """``job_01j...``: 48-bit millisecond time + 80 random bits, Crockford base32 (a lower-case ULID)."""
    value = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return f"{kind}_{''.join(reversed(chars))}"


def sha256_hex(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


class RedisKeys:
    """The Redis key layout (``p`` = ``Settings.redis_prefix``).

    ======================================  ======  ===========================================
    key                                     type    content
    ======================================  ======  ===========================================
    ``p job:<job_id>``                      hash    the job record (:class:`service.jobs.JobRecord`)
    ``p job:<job_id>:webhooks``             list    JSON webhook attempt log (newest last)
    ``p jobs:<tenant>:all``                 zset    job ids of a tenant (score 0, lex = time)
    ``p jobs:<tenant>:<status>``            zset    job ids of a tenant in one status
    ``p idem:<tenant>:<sha256(key)>``       string  JSON {fingerprint, job_id} (TTL)
    ``p upload:<upload_id>``                hash    an upload (presigned POST / multipart)
    ``p apikey:<sha256(key)>``              hash    {tenant, key_id, created_at}
    ``p tenant:<tenant>``                   hash    {webhook_secret, created_at}
    ``p tenant:<tenant>:keys``              set     sha256 of the tenant's keys
    ``p ratelimit:<key_id>``                zset    request times in the sliding window
    ``p stats:jobs``                        hash    status -> number of jobs that entered it
    ``p workers:<hostname>``                string  JSON worker heartbeat (TTL)
    ======================================  ======  ===========================================
    """

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def job(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def job_webhooks(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:webhooks"

    def tenant_jobs(self, tenant: str, status: str = "all") -> str:
        return f"{self.p}jobs:{tenant}:{status}"

    def tenant_jobs_prefix(self, tenant: str) -> str:
        return f"{self.p}jobs:{tenant}:"

    def idempotency(self, tenant: str, key: str) -> str:
        return f"{self.p}idem:{tenant}:{sha256_hex(key)}"

    def upload(self, upload_id: str) -> str:
        return f"{self.p}upload:{upload_id}"

    def apikey(self, key_hash: str) -> str:
        return f"{self.p}apikey:{key_hash}"

    def tenant(self, tenant: str) -> str:
        return f"{self.p}tenant:{tenant}"

    def tenant_keys(self, tenant: str) -> str:
        return f"{self.p}tenant:{tenant}:keys"

    def ratelimit(self, key_id: str) -> str:
        return f"{self.p}ratelimit:{key_id}"

    def job_stats(self) -> str:
        return f"{self.p}stats:jobs"

    def worker(self, hostname: str) -> str:
        return f"{self.p}workers:{hostname}"

    def workers_pattern(self) -> str:
        return f"{self.p}workers:*"


def make_redis(settings: Settings, url: str | None = None) -> redis.Redis:
    """A client returning ``str`` values, with bounded socket timeouts."""
    return redis.Redis.from_url(
        url or settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
    )
