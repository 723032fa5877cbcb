"""Who is working on what, so that nothing is left behind when a process dies.

**Job leases (running jobs).** A worker running a job's task holds a lease on it: ``<p>lease:<job id>/<task>``
with a short TTL (``job_lease_ttl_s``), refreshed by a thread of the process doing the work
(:class:`LeaseKeeper`) and removed when the task ends; the lease id sits in ``<p>running`` meanwhile (an
archive's groups run as tasks of their own, each with its lease). When the process dies (SIGKILL,
out of memory, a lost machine) its leases expire within the TTL and :func:`reconcile` fails those jobs with
``worker_lost``, long before the broker's visibility timeout (hours) would hand the message to another worker
(which then finds the job terminal and skips it: each job ends exactly once).

**Pending inputs (objects without a job record yet).** The gateway writes a photo to S3 before it creates the
job record. It first notes the key in ``<p>inputs:pending`` (a sorted set scored by a deadline) and removes it
once the record exists; an upload that failed, or that S3 completed after the gateway had given up on it (a
hung request answered with 503), is deleted by :func:`reconcile` once its deadline passed and no job record
names it.

:func:`reconcile` runs in every worker's heartbeat thread; its steps are idempotent and safe to run
concurrently (a job fails only through the store's state transition, which one caller wins).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from service.config import Settings

log = logging.getLogger(__name__)


class LeaseKeys:
    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def lease(self, lease_id: str) -> str:
        return f"{self.p}lease:{lease_id}"

    def running(self) -> str:
        return f"{self.p}running"

    def pending_inputs(self) -> str:
        return f"{self.p}inputs:pending"


@dataclass
class Leases:
    r: redis.Redis
    keys: LeaseKeys
    ttl_s: float

    def hold(self, lease_id: str, worker: str) -> None:
        pipe = self.r.pipeline()
        pipe.sadd(self.keys.running(), lease_id)
        pipe.set(self.keys.lease(lease_id), worker, px=int(self.ttl_s * 1000))
        pipe.execute()

    def refresh(self, lease_ids: list[str]) -> None:
        pipe = self.r.pipeline()
        for lease_id in lease_ids:
            pipe.pexpire(self.keys.lease(lease_id), int(self.ttl_s * 1000))
        pipe.execute()

    def release(self, lease_id: str) -> None:
        pipe = self.r.pipeline()
        pipe.delete(self.keys.lease(lease_id))
        pipe.srem(self.keys.running(), lease_id)
        pipe.execute()

    def lapsed(self, limit: int = 1000) -> list[str]:
        """Leases in ``running`` that expired (at most ``limit``).

        A task that ends releases its lease between this read of ``running`` and the check of its key; an
        archive's job goes on running under its next task's lease, so reading that lease as lapsed would fail
        a healthy job as ``worker_lost``. The check therefore reads membership and key in one transaction
        (``release`` removes both in one): a lease counts as lapsed only while it is still in ``running``."""
        ids = sorted(str(j) for j in self.r.srandmember(self.keys.running(), limit) or [])
        if not ids:
            return []
        pipe = self.r.pipeline(transaction=True)
        for lease_id in ids:
            pipe.sismember(self.keys.running(), lease_id)
            pipe.exists(self.keys.lease(lease_id))
        flags = pipe.execute()
        return [j for j, member, alive in zip(ids, flags[0::2], flags[1::2], strict=True) if member and not alive]

    def forget(self, lease_id: str) -> None:
        self.r.srem(self.keys.running(), lease_id)

    # ----- pending inputs -------------------------------------------------------------------------------
    def note_input(self, job_id: str, key: str, grace_s: float) -> None:
        self.r.zadd(self.keys.pending_inputs(), {f"{job_id}|{key}": time.time() + grace_s})

    def input_recorded(self, job_id: str, key: str) -> None:
        self.r.zrem(self.keys.pending_inputs(), f"{job_id}|{key}")

    def overdue_inputs(self, now: float | None = None, limit: int = 1000) -> list[tuple[str, str]]:
        members = self.r.zrangebyscore(self.keys.pending_inputs(), "-inf", now or time.time(), start=0, num=limit)
        return [tuple(str(m).split("|", 1)) for m in members]  # type: ignore[misc]


def task_lease(job_id: str, task: str) -> str:
    return f"{job_id}/{task}"


def job_of(lease: str) -> str:
    return lease.split("/", 1)[0]


def leases_for(r: redis.Redis, settings: Settings) -> Leases:
    return Leases(r, LeaseKeys(settings.redis_prefix), settings.job_lease_ttl_s)


class LeaseKeeper:
    """Refreshes this process's leases from a daemon thread (the task's own thread is busy in torch)."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.held: set[str] = set()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="veil-leases", daemon=True)
        self.thread.start()

    def hold(self, lease_id: str, worker: str) -> None:
        self.leases.hold(lease_id, worker)
        with self.lock:
            self.held.add(lease_id)

    def release(self, lease_id: str) -> None:
        with self.lock:
            self.held.discard(lease_id)
        self.leases.release(lease_id)

    def _run(self) -> None:
        while not self.stop_event.wait(max(0.2, self.leases.ttl_s / 3)):
            with self.lock:
                held = sorted(self.held)
            if not held:
                continue
            try:
                self.leases.refresh(held)
            except redis.RedisError as exc:  # a Redis outage: the next round tries again
                log.warning("cannot refresh job leases: %s", exc)


@dataclass
class Reconciled:
    lost: list[str]
    deleted_inputs: list[str]


def reconcile(
    leases: Leases,
    job_status: Callable[[str], str | None],
    fail_lost: Callable[[str], None],
    delete_object: Callable[[str], None],
) -> Reconciled:
    """Fail the running jobs whose lease lapsed; delete overdue pending inputs that no job record names.

    ``job_status(job_id)``: the job's status, None without a record; ``fail_lost(job_id)``: fail it as
    ``worker_lost`` (through the store's transition); ``delete_object(key)``: remove an S3 object.
    """
    lost: list[str] = []
    for lease_id in leases.lapsed():
        job_id = job_of(lease_id)
        if job_id not in lost and job_status(job_id) == "running":
            fail_lost(job_id)
            lost.append(job_id)
        leases.forget(lease_id)
    deleted: list[str] = []
    for job_id, key in leases.overdue_inputs():
        if job_status(job_id) is None:
            delete_object(key)
            deleted.append(key)
        leases.input_recorded(job_id, key)
    return Reconciled(lost, deleted)
