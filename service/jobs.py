"""The job record in Redis and every operation on it, for the gateway and the workers.

A job is a Redis hash (``<prefix>job:<id>``, see :class:`service.redisdb.RedisKeys`); plain string fields
are stored as they are, every other field as JSON. Status changes go through :meth:`JobStore.transition`,
a Lua compare-and-set that also moves the id between the tenant's per-status index sets and counts the
transition in ``<prefix>stats:jobs``. Worker-side helpers: :meth:`JobStore.start`,
:meth:`JobStore.set_progress`, :meth:`JobStore.succeed`, :meth:`JobStore.fail`,
:meth:`JobStore.is_canceled`, :meth:`JobStore.log_webhook_attempt`, :meth:`JobStore.disable_webhook`.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import redis
from pydantic import BaseModel, Field

from service.config import Settings
from service.contract import InputRef, JobKind, OutputRef, ResolvedOptions
from service.redisdb import ID_RE, RedisKeys
from service.states import InvalidTransition, JobStatus, is_terminal, sources

GRACE_S = 24 * 3600  # a job record outlives its objects by a day, so clients can see it expired


class JobRecord(ResolvedOptions):
    """A job: its resolved options (:class:`service.contract.ResolvedOptions`) plus its state."""

    id: str
    tenant: str
    status: JobStatus = JobStatus.QUEUED
    kind: JobKind
    input: InputRef
    output_prefix: str
    outputs: list[OutputRef] | None = None
    report: dict[str, Any] | None = Field(
        default=None, description="what the worker measured: per-photo metrics (photo) or a summary (archive)"
    )
    progress_done: int = 0
    progress_total: int = 0
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float
    error_code: str | None = None
    error_message: str | None = None
    webhook_disabled: bool = False
    task_id: str | None = None
    worker: str | None = None

    PLAIN: ClassVar[frozenset[str]] = frozenset(
        {
            "id",
            "tenant",
            "status",
            "kind",
            "method",
            "strength",
            "output_format",
            "output_prefix",
            "error_code",
            "error_message",
            "webhook_url",
            "task_id",
            "worker",
        }
    )

    def to_redis(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            out[name] = value if name in self.PLAIN else json.dumps(value, separators=(",", ":"))
        return out

    @classmethod
    def from_redis(cls, raw: dict[str, str]) -> JobRecord:
        data: dict[str, Any] = {}
        for name, value in raw.items():
            if name not in cls.model_fields:
                continue
            data[name] = value if name in cls.PLAIN else json.loads(value)
        return cls.model_validate(data)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Encode a partial update the way :meth:`JobRecord.to_redis` does (None values are dropped)."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        elif isinstance(value, list):
            value = [v.model_dump(mode="json") if isinstance(v, BaseModel) else v for v in value]
        out[name] = value if name in JobRecord.PLAIN else json.dumps(value, separators=(",", ":"))
    return out


# KEYS[1] job hash, KEYS[2] stats hash; ARGV[1] tenant index prefix, ARGV[2] target status,
# ARGV[3] comma-separated allowed current statuses, ARGV[4..] field/value pairs to set.
_TRANSITION_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {-1, ''} end
local ok = false
for s in string.gmatch(ARGV[3], '[^,]+') do
  if s == cur then ok = true end
end
if not ok then return {0, cur} end
local id = redis.call('HGET', KEYS[1], 'id')
redis.call('HSET', KEYS[1], 'status', ARGV[2])
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('ZREM', ARGV[1] .. cur, id)
redis.call('ZADD', ARGV[1] .. ARGV[2], 0, id)
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {1, cur}
"""

# KEYS[1] job hash; ARGV[1] required status, ARGV[2..] field/value pairs.
_UPDATE_IF_LUA = """
local cur = redis.call('HGET', KEYS[1], 'status')
if cur ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""


@dataclass(frozen=True)
class IdempotencyResult:
    outcome: Literal["new", "replay", "conflict", "in_progress"]
    job_id: str


def encode_cursor(job_id: str) -> str:
    return base64.urlsafe_b64encode(job_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The job id in a cursor; ``ValueError`` for anything this service did not hand out."""
    try:
        job_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError("invalid cursor") from exc
    if not ID_RE.match(job_id):
        raise ValueError("invalid cursor")
    return job_id


class JobStore:
    """Job records in Redis. Thread-safe (redis-py clients are); all methods are blocking."""

    def __init__(self, r: redis.Redis, settings: Settings) -> None:
        self.r = r
        self.settings = settings
        self.keys = RedisKeys(settings.redis_prefix)
        self._transition = r.register_script(_TRANSITION_LUA)
        self._update_if = r.register_script(_UPDATE_IF_LUA)

    # ---- creation and reads -------------------------------------------------------------------
    def record_ttl(self, job: JobRecord) -> int:
        return max(1, int(job.expires_at - time.time()) + GRACE_S)

    def create(self, job: JobRecord) -> None:
        key = self.keys.job(job.id)
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=job.to_redis())  # type: ignore[arg-type]
            pipe.expire(key, self.record_ttl(job))
            pipe.zadd(self.keys.tenant_jobs(job.tenant), {job.id: 0})
            pipe.zadd(self.keys.tenant_jobs(job.tenant, job.status.value), {job.id: 0})
            pipe.hincrby(self.keys.job_stats(), job.status.value, 1)
            pipe.execute()

    def get(self, job_id: str, tenant: str | None = None) -> JobRecord | None:
        """The job, or None when it does not exist or (with ``tenant``) belongs to another tenant."""
        if not ID_RE.match(job_id):
            return None
        raw: dict[str, str] = self.r.hgetall(self.keys.job(job_id))  # type: ignore[assignment]
        if not raw:
            return None
        job = JobRecord.from_redis(raw)
        if tenant is not None and job.tenant != tenant:
            return None
        return job

    def list_jobs(
        self, tenant: str, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first; returns the page and the cursor of the next page (None at the end)."""
        index = self.keys.tenant_jobs(tenant, status.value if status else "all")
        upper = f"({decode_cursor(cursor)}" if cursor else "+"
        jobs: list[JobRecord] = []
        for _ in range(10):  # bounded: each round skips ids whose records expired
            ids: list[str] = self.r.zrevrangebylex(index, upper, "-", start=0, num=limit + 1 - len(jobs))  # type: ignore[assignment]
            if not ids:
                return jobs, None
            with self.r.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hgetall(self.keys.job(job_id))
                raws = pipe.execute()
            stale = []
            for job_id, raw in zip(ids, raws, strict=True):
                if not raw:
                    stale.append(job_id)
                    continue
                job = JobRecord.from_redis(raw)
                if status is not None and job.status != status:
                    continue  # moved on between the index read and the record read
                jobs.append(job)
            if stale:
                self.r.zrem(index, *stale)
            upper = f"({ids[-1]}"
            if len(jobs) > limit:
                return jobs[:limit], encode_cursor(jobs[limit - 1].id)
        return jobs, (encode_cursor(jobs[-1].id) if jobs else None)

    # ---- state changes ------------------------------------------------------------------------
    def transition(self, job_id: str, target: JobStatus | str, **fields: Any) -> JobStatus:
        """Atomically move the job to ``target`` if the state machine allows it from its current state.

        Returns the previous status; raises :class:`InvalidTransition` (with ``current``) otherwise and
        ``KeyError`` when the job does not exist.
        """
        target = JobStatus(target)
        job = self.r.hget(self.keys.job(job_id), "tenant")
        if job is None:
            raise KeyError(job_id)
        allowed = ",".join(s.value for s in sources(target))
        args: list[str] = [self.keys.tenant_jobs_prefix(str(job)), target.value, allowed or "-"]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        code, previous = self._transition(keys=[self.keys.job(job_id), self.keys.job_stats()], args=args)
        if code == -1:
            raise KeyError(job_id)
        if code == 0:
            raise InvalidTransition(previous, target)
        return JobStatus(previous)

    def start(self, job_id: str, total: int = 1, worker: str | None = None) -> bool:
        """queued -> running (sets ``started_at``). False when the job was canceled or taken meanwhile."""
        try:
            self.transition(
                job_id, JobStatus.RUNNING, started_at=time.time(), progress_total=total, worker=worker
            )
        except InvalidTransition:
            return False
        return True

    def set_progress(self, job_id: str, done: int, total: int | None = None) -> bool:
        """Update progress while running; False once the job is no longer running (e.g. canceled)."""
        fields: dict[str, Any] = {"progress_done": done}
        if total is not None:
            fields["progress_total"] = total
        args: list[str] = [JobStatus.RUNNING.value]
        for name, value in encode_fields(fields).items():
            args += [name, value]
        return bool(self._update_if(keys=[self.keys.job(job_id)], args=args))

    def succeed(
        self, job_id: str, outputs: list[OutputRef] | None = None, report: dict[str, Any] | None = None
    ) -> bool:
        try:
            self.transition(
                job_id, JobStatus.SUCCEEDED, finished_at=time.time(), outputs=outputs, report=report
            )
        except InvalidTransition:
            return False
        return True

    def fail(self, job_id: str, code: str, message: str, report: dict[str, Any] | None = None) -> bool:
        try:
            self.transition(
                job_id,
                JobStatus.FAILED,
                finished_at=time.time(),
                error_code=code,
                error_message=message[:1000],
                report=report,
            )
        except InvalidTransition:
            return False
        return True

    def cancel(self, job_id: str) -> JobStatus:
        """queued/running -> canceled. Returns the previous status; InvalidTransition when terminal."""
        return self.transition(job_id, JobStatus.CANCELED, finished_at=time.time())

    def is_canceled(self, job_id: str) -> bool:
        """Workers call this before starting and between items; a missing job counts as canceled."""
        status = self.r.hget(self.keys.job(job_id), "status")
        return status is None or status == JobStatus.CANCELED.value

    def set_fields(self, job_id: str, **fields: Any) -> None:
        """Set non-status fields (task id, ...); status changes must go through :meth:`transition`."""
        if "status" in fields:
            raise ValueError("use transition() to change the status")
        encoded = encode_fields(fields)
        if encoded and self.r.exists(self.keys.job(job_id)):
            self.r.hset(self.keys.job(job_id), mapping=encoded)  # type: ignore[arg-type]

    # ---- webhooks -----------------------------------------------------------------------------
    def log_webhook_attempt(self, job_id: str, attempt: dict[str, Any]) -> None:
        key = self.keys.job_webhooks(job_id)
        ttl = self.r.ttl(self.keys.job(job_id))
        with self.r.pipeline(transaction=True) as pipe:
            pipe.rpush(key, json.dumps(attempt, separators=(",", ":")))
            pipe.ltrim(key, -self.settings.webhook_attempt_log_max, -1)
            if isinstance(ttl, int) and ttl > 0:
                pipe.expire(key, ttl)
            pipe.execute()

    def webhook_attempts(self, job_id: str) -> list[dict[str, Any]]:
        items: list[str] = self.r.lrange(self.keys.job_webhooks(job_id), 0, -1)  # type: ignore[assignment]
        return [json.loads(i) for i in items]

    def disable_webhook(self, job_id: str) -> None:
        self.set_fields(job_id, webhook_disabled=True)

    def webhook_disabled(self, job_id: str) -> bool:
        return self.r.hget(self.keys.job(job_id), "webhook_disabled") == "true"

    # ---- idempotency --------------------------------------------------------------------------
    def reserve_idempotency(self, tenant: str, key: str, fingerprint: str, job_id: str) -> IdempotencyResult:
        """Claim ``key`` for ``job_id``: ``new`` (claimed), ``replay`` (same body, job exists),
        ``conflict`` (different body) or ``in_progress`` (same body, job not created yet)."""
        rkey = self.keys.idempotency(tenant, key)
        value = json.dumps({"fingerprint": fingerprint, "job_id": job_id})
        for _ in range(3):
            if self.r.set(rkey, value, nx=True, ex=self.settings.idempotency_ttl_s):
                return IdempotencyResult("new", job_id)
            raw = self.r.get(rkey)
            if raw is None:
                continue  # expired in between: try to claim again
            existing = json.loads(str(raw))
            if existing["fingerprint"] != fingerprint:
                return IdempotencyResult("conflict", existing["job_id"])
            if self.r.exists(self.keys.job(existing["job_id"])):
                return IdempotencyResult("replay", existing["job_id"])
            return IdempotencyResult("in_progress", existing["job_id"])
        return IdempotencyResult("in_progress", job_id)

    def release_idempotency(self, tenant: str, key: str) -> None:
        self.r.delete(self.keys.idempotency(tenant, key))

    # ---- metrics ------------------------------------------------------------------------------
    def status_counts(self) -> dict[str, int]:
        raw: dict[str, str] = self.r.hgetall(self.keys.job_stats())  # type: ignore[assignment]
        return {k: int(v) for k, v in raw.items()}
