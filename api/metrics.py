"""Prometheus metrics (one registry per app).

* ``veil_http_request_duration_seconds{method,route,status}``: request latency histogram;
* ``veil_jobs_created_total{method,kind,status}``: jobs this process created (status queued, or failed
  when the enqueue failed);
* ``veil_jobs_total{status}``: jobs that entered each status, all processes and workers (Redis);
* ``veil_queue_depth{queue}``: messages waiting in the Celery queues ``gpu`` and ``io`` (Redis);
* ``veil_workers_live``: workers with a live heartbeat;
* ``veil_redis_up``: whether the scrape could read Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.config import Settings
from service.heartbeat import live_workers
from service.jobs import JobStore
from service.queue import queue_depth

log = logging.getLogger(__name__)


class RedisCollector(Collector):
    def __init__(
        self, settings: Settings, resources: Callable[[], tuple[JobStore, redis.Redis] | None]
    ) -> None:
        self.settings = settings
        self.resources = resources

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("veil_redis_up", "Whether the metrics scrape could read Redis")
        got = self.resources()
        if got is None:
            up.add_metric([], 0)
            yield up
            return
        store, broker = got
        try:
            counts = store.status_counts()
            depths = {
                q: queue_depth(broker, self.settings, q)
                for q in (self.settings.queue_gpu, self.settings.queue_io)
            }
            workers = len(live_workers(store.r, self.settings))
        except redis.RedisError as exc:
            log.warning("metrics: Redis unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = CounterMetricFamily("veil_jobs", "Jobs that entered each status", labels=["status"])
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        yield jobs
        depth = GaugeMetricFamily("veil_queue_depth", "Messages waiting in a Celery queue", labels=["queue"])
        for q, n in depths.items():
            depth.add_metric([q], n)
        yield depth
        live = GaugeMetricFamily("veil_workers_live", "Workers with a live heartbeat")
        live.add_metric([], workers)
        yield live


class Metrics:
    def __init__(self, settings: Settings, resources: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "veil_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.jobs_created = Counter(
            "veil_jobs_created",
            "Jobs created by this process",
            ["method", "kind", "status"],
            registry=self.registry,
        )
        self.registry.register(RedisCollector(settings, resources))

    def render(self) -> bytes:
        return generate_latest(self.registry)
