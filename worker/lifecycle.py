"""Worker lifecycle: where models load, and the heartbeat ``/readyz`` looks for.

* ``worker_init`` (the main process, before any fork): records the queues this worker consumes. With a
  non-forking pool (``solo``, ``threads``) on the gpu queue, this process is the one that protects, so
  it loads the models here, before it starts consuming. Nothing torch-related happens here for prefork.
* ``worker_process_init`` (each prefork child, after the fork): fresh Redis/S3 clients, and on the gpu
  queue torch's threads, the device and the preloaded forgers (:func:`worker.models.init_process`).
* ``worker_ready``: a daemon thread refreshes ``<prefix>workers:<hostname>`` (:func:`service.heartbeat.beat`)
  every ``worker_heartbeat_ttl_s / 3`` seconds; ``worker_shutdown`` stops it and removes the key.

A prefork parent forks a new child whenever one dies, while its heartbeat thread runs. A fork copies every
lock as it is at that instant, and one the heartbeat thread holds mid-round (its Redis client's, the S3
client's, the context's) stays held forever in the child, which hangs at its first use of it: a redelivered
task that was received and never started. So a fork waits for the round in progress to end
(:data:`ROUND`, taken by each round and by ``os.fork``), bounded by the Redis and S3 socket timeouts.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import redis
from celery import signals

from service.heartbeat import beat, retire
from service.leases import leases_for, reconcile
from service.redisdb import make_redis
from worker import models
from worker.config import WorkerSettings, get_worker_settings
from worker.context import get_context, reset_context

log = logging.getLogger(__name__)

ROUND = threading.Lock()  # held by a heartbeat round and across every fork of this process

# The forking thread takes it (waiting for a round to end) and releases it on both sides of the fork; the
# child's copy is held by its own main thread, which the release in the child frees.
os.register_at_fork(before=ROUND.acquire, after_in_parent=ROUND.release, after_in_child=ROUND.release)


class _State:
    queues: tuple[str, ...] = ()
    pool: str = ""
    protects_here: bool = False  # the main process runs gpu tasks itself (solo / threads)
    heartbeat: Heartbeat | None = None


state = _State()


def _pool_name(pool_cls: Any) -> str:
    if isinstance(pool_cls, str):
        return pool_cls.rsplit(":", 1)[0].rsplit(".", 1)[-1]
    module = getattr(pool_cls, "__module__", "") or ""
    return module.rsplit(".", 1)[-1]


@signals.worker_init.connect
def on_worker_init(sender: Any = None, **_: Any) -> None:
    settings = get_worker_settings()
    try:
        queues = tuple(sender.app.amqp.queues.consume_from)
    except AttributeError:
        queues = ()
    state.queues = queues
    state.pool = _pool_name(getattr(sender, "pool_cls", ""))
    consumes_gpu = settings.queue_gpu in queues
    state.protects_here = consumes_gpu and state.pool != "prefork"
    log.info("worker consumes %s with the %s pool", ", ".join(queues), state.pool or "?")
    if state.protects_here:
        models.init_process(settings)


@signals.worker_process_init.connect
def on_process_init(**_: Any) -> None:
    reset_context()  # never reuse the parent's connections
    settings = get_worker_settings()
    if settings.queue_gpu in state.queues:
        models.init_process(settings)


class Heartbeat:
    """Refreshes the worker's key until stopped (bounded waits; Redis errors are logged, not raised)."""

    def __init__(
        self, hostname: str, queues: tuple[str, ...], info: dict[str, Any], settings: WorkerSettings | None = None
    ) -> None:
        self.settings = settings or get_worker_settings()
        self.hostname = hostname
        self.queues = queues
        self.info = info
        self.stop_event = threading.Event()
        self.redis: redis.Redis = make_redis(self.settings)
        self.thread = threading.Thread(target=self._run, name="veil-heartbeat", daemon=True)

    def beat_once(self) -> None:
        beat(self.redis, self.settings, self.hostname, self.queues, pid=os.getpid(), **self.info)

    def _run(self) -> None:
        # the reconciler must notice a lapsed lease well within its TTL, whatever the heartbeat's period
        interval = max(0.5, min(self.settings.worker_heartbeat_ttl_s, self.settings.job_lease_ttl_s) / 3)
        while not self.stop_event.wait(interval):
            with ROUND:  # no fork while a round holds any lock (see the module's docstring)
                self._round()

    def _round(self) -> None:
        try:
            self.beat_once()
        except redis.RedisError as exc:
            log.warning("heartbeat failed: %s", exc)
            return
        try:
            reconcile_leftovers()
        except Exception:  # the heartbeat must outlive any error of the reconciler
            log.exception("reconciling leftovers failed")

    def start(self) -> None:
        try:
            self.beat_once()
        except redis.RedisError as exc:  # the thread keeps trying
            log.error("cannot write the heartbeat: %s", exc)
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=5)
        try:
            retire(self.redis, self.settings, self.hostname)
        except redis.RedisError as exc:
            log.warning("cannot remove the heartbeat: %s", exc)


def reconcile_leftovers() -> None:
    """Fail the jobs of dead processes and delete inputs no job record names (:mod:`service.leases`)."""
    from worker.tasks.protocol import fail_job

    ctx = get_context()

    def status(job_id: str) -> str | None:
        job = ctx.store.get(job_id)
        return None if job is None else str(job.status)

    def lost(job_id: str) -> None:
        fail_job(ctx, job_id, "worker_lost", "the worker running this job stopped (killed or out of memory) "
                 "before finishing it; submit the photo again")

    done = reconcile(leases_for(ctx.redis, ctx.settings), status, lost, ctx.storage.delete)
    if done.lost or done.deleted_inputs:
        log.warning("reconciled: jobs lost with their worker %s; orphaned inputs deleted %s", done.lost,
                    done.deleted_inputs)


@signals.worker_ready.connect
def on_worker_ready(sender: Any = None, **_: Any) -> None:
    hostname = str(getattr(sender, "hostname", "") or "") or None
    info: dict[str, Any] = {"pool": state.pool}
    if state.protects_here:
        ms = models.state()
        info.update(device=ms.device, forgers=list(ms.preloaded), model_errors=ms.preload_errors)
        log.info("models on %s (%d torch threads): forgers %s loaded in %.1f s%s", ms.device, ms.threads,
                 ", ".join(ms.preloaded) or "none", ms.init_seconds,
                 f"; NOT loaded: {ms.preload_errors}" if ms.preload_errors else "")
    hb = Heartbeat(hostname or f"veil@{os.uname().nodename}", state.queues, info)
    hb.start()
    state.heartbeat = hb


@signals.worker_shutdown.connect
def on_worker_shutdown(**_: Any) -> None:
    if state.heartbeat is not None:
        state.heartbeat.stop()
        state.heartbeat = None
