"""Per-process clients (Redis, job store, S3) and the workers' own Redis keys.

Clients are created lazily in the process that uses them, never inherited through ``fork``: a Redis
connection or a boto3 client shared by a prefork parent and its children would interleave their traffic.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass

import redis

from service.jobs import JobStore
from service.leases import LeaseKeeper, leases_for
from service.redisdb import make_redis
from service.storage import Storage
from worker.config import WorkerSettings, get_worker_settings


class WorkerKeys:
    """Redis keys the workers add next to a job record (all expire with it).

    ===========================================  ======  ================================================
    ``p job:<id>:deliveries:<task>``             string  deliveries of a task that did not finish (poison)
    ``p job:<id>:archive``                       hash    ``groups`` (number of protect_group tasks), ``total``
    ``p job:<id>:groups_done``                   set     group numbers finished (the fan-in counter)
    ``p job:<id>:results``                       hash    entry index -> JSON result of one archive entry
    ``p job:<id>:progress_sent``                 string  throttle of job.progress webhooks (TTL)
    ===========================================  ======  ================================================
    """

    def __init__(self, prefix: str) -> None:
        self.p = prefix

    def deliveries(self, job_id: str, task: str) -> str:
        return f"{self.p}job:{job_id}:deliveries:{task}"

    def archive(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:archive"

    def groups_done(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:groups_done"

    def results(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:results"

    def progress_sent(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:progress_sent"

    def all_for(self, job_id: str) -> list[str]:
        """The fan-out/fan-in keys of a job (not the delivery counters)."""
        return [self.archive(job_id), self.groups_done(job_id), self.results(job_id), self.progress_sent(job_id)]


@dataclass
class Context:
    settings: WorkerSettings
    redis: redis.Redis
    store: JobStore
    storage: Storage
    keys: WorkerKeys
    pid: int

    _keeper: LeaseKeeper | None = None

    @property
    def keeper(self) -> LeaseKeeper:
        """This process's lease keeper (its thread starts with the first job this process runs)."""
        if self._keeper is None:
            self._keeper = LeaseKeeper(leases_for(self.redis, self.settings))
        return self._keeper

    @property
    def worker_id(self) -> str:
        """Written in the job's ``worker`` field: host and process (a prefork child has its own pid)."""
        return f"{socket.gethostname()}:{self.pid}"


_lock = threading.Lock()
_context: Context | None = None


def get_context(settings: WorkerSettings | None = None) -> Context:
    """This process's clients (rebuilt after a fork)."""
    global _context
    with _lock:
        if _context is None or _context.pid != os.getpid():
            settings = settings or get_worker_settings()
            r = make_redis(settings)
            _context = Context(
                settings=settings,
                redis=r,
                store=JobStore(r, settings),
                storage=Storage(settings),
                keys=WorkerKeys(settings.redis_prefix),
                pid=os.getpid(),
            )
        return _context


def reset_context() -> None:
    """Forget the clients (tests; after a fork the pid check does it)."""
    global _context
    with _lock:
        _context = None


def _after_fork_in_child() -> None:
    # The parent's heartbeat thread takes the lock (the reconciler's get_context); a fork at that moment
    # would hand the child a lock no thread of its will ever release, and worker_process_init would hang.
    global _lock, _context
    _lock = threading.Lock()
    _context = None


os.register_at_fork(after_in_child=_after_fork_in_child)
