"""The job record in Redis: creation, atomic transitions, progress, idempotency, TTLs."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from service.contract import InputRef, OutputRef
from service.jobs import JobRecord, JobStore, decode_cursor, encode_cursor
from service.redisdb import ID_RE, new_id
from service.states import InvalidTransition, JobStatus


def make(store: JobStore, tenant: str = "store-t") -> JobRecord:
    now = time.time()
    job_id = new_id("job")
    job = JobRecord(
        id=job_id,
        tenant=tenant,
        kind="image",
        method="pgd",
        forgers=["stargan"],
        targets=["Blond_Hair"],
        eps=0.025,
        core_eps=0.05,
        input=InputRef(bucket="b", key="k", filename="a.png", content_type="image/png", size=5),
        output_prefix=f"tenants/{tenant}/outputs/{job_id}/",
        created_at=now,
        expires_at=now + 3600,
        metadata={"a": [1, 2]},
    )
    store.create(job)
    return job


def test_roundtrip_and_tenant_scoping(store: JobStore, rclient: redis.Redis) -> None:
    job = make(store)
    got = store.get(job.id)
    assert got == job
    assert store.get(job.id, tenant="store-t") == job and store.get(job.id, tenant="other") is None
    assert store.get("job_../../x") is None
    raw = rclient.hgetall(store.keys.job(job.id))
    assert raw["status"] == "queued" and raw["targets"] == '["Blond_Hair"]'
    assert 3600 < rclient.ttl(store.keys.job(job.id)) <= 3600 + 86400 + 5


def test_worker_lifecycle(store: JobStore) -> None:
    job = make(store)
    assert store.start(job.id, total=3, worker="w1")
    assert not store.start(job.id)  # taken
    assert store.set_progress(job.id, 2)
    store.set_fields(job.id, task_id="t-1")
    outputs = [OutputRef(key=f"{job.output_prefix}a.png", size=10, content_type="image/png")]
    assert store.succeed(job.id, outputs)
    done = store.get(job.id)
    assert done is not None and done.status == JobStatus.SUCCEEDED and done.worker == "w1"
    assert (done.progress_done, done.progress_total) == (2, 3) and done.outputs == outputs
    assert done.started_at and done.finished_at and done.finished_at >= done.started_at
    assert not store.set_progress(job.id, 3)  # only while running
    with pytest.raises(InvalidTransition) as exc:
        store.cancel(job.id)
    assert exc.value.current == "succeeded"
    with pytest.raises(ValueError):
        store.set_fields(job.id, status="queued")
    with pytest.raises(KeyError):
        store.transition("job_00000000000000000000000000", JobStatus.RUNNING)


def test_concurrent_transitions_have_one_winner(store: JobStore) -> None:
    job = make(store)
    assert store.start(job.id)
    results: list[str] = []

    def attempt(kind: str) -> None:
        ok = store.succeed(job.id) if kind == "succeed" else store.fail(job.id, "x", "y")
        if ok:
            results.append(kind)

    threads = [threading.Thread(target=attempt, args=(k,)) for k in ["succeed", "fail"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=5)
    assert len(results) == 1


def test_indexes_and_stats_follow_transitions(store: JobStore, rclient: redis.Redis) -> None:
    before = store.status_counts()
    job = make(store, tenant="idx-t")
    assert rclient.zscore(store.keys.tenant_jobs("idx-t", "queued"), job.id) == 0
    store.start(job.id)
    store.fail(job.id, "oops", "m" * 5000)
    assert rclient.zscore(store.keys.tenant_jobs("idx-t", "queued"), job.id) is None
    assert rclient.zscore(store.keys.tenant_jobs("idx-t", "failed"), job.id) == 0
    after = store.status_counts()
    assert after["queued"] == before.get("queued", 0) + 1 and after["failed"] == before.get("failed", 0) + 1
    assert len(store.get(job.id).error_message) == 1000  # type: ignore[union-attr, arg-type]
    # An expired record is skipped and dropped from the index.
    gone = make(store, tenant="idx-t")
    rclient.delete(store.keys.job(gone.id))
    jobs, cursor = store.list_jobs("idx-t")
    assert [j.id for j in jobs] == [job.id] and cursor is None
    assert rclient.zscore(store.keys.tenant_jobs("idx-t"), gone.id) is None


def test_idempotency_outcomes(store: JobStore) -> None:
    a, b = new_id("job"), new_id("job")
    assert store.reserve_idempotency("it", "k1", "fp", a).outcome == "new"
    assert store.reserve_idempotency("it", "k1", "fp", b).outcome == "in_progress"  # no record yet
    assert store.reserve_idempotency("it", "k1", "other", b).outcome == "conflict"
    assert store.reserve_idempotency("other-tenant", "k1", "fp", b).outcome == "new"
    store.release_idempotency("it", "k1")
    assert store.reserve_idempotency("it", "k1", "fp", b).outcome == "new"


def test_ids_and_cursors() -> None:
    ids = [new_id("job") for _ in range(3)]
    time.sleep(0.002)
    later = new_id("job")
    assert all(ID_RE.match(i) for i in ids) and max(ids) < later  # time-ordered
    assert decode_cursor(encode_cursor(later)) == later
    for bad in ["", "!!!", encode_cursor("job_../../../etc/passwd")]:
        with pytest.raises(ValueError):
            decode_cursor(bad)
