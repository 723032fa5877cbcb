"""Leftovers of dead processes (service.leases) on the real Redis: lapsed job leases and orphaned inputs."""

from __future__ import annotations

import time

import pytest
import redis

from service.leases import LeaseKeeper, LeaseKeys, Leases, reconcile, task_lease


def make(rclient: redis.Redis, redis_prefix: str, name: str, ttl: float) -> Leases:
    return Leases(rclient, LeaseKeys(f"{redis_prefix}{name}:"), ttl)


def wait_until(cond, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_a_lease_lapses_unless_its_keeper_refreshes_it(rclient: redis.Redis, redis_prefix: str) -> None:
    leases = make(rclient, redis_prefix, "lapse", ttl=0.3)
    leases.hold("job-a/protect", "host:1")
    assert leases.lapsed() == []
    assert wait_until(lambda: leases.lapsed() == ["job-a/protect"], timeout=3)
    keeper = LeaseKeeper(leases)
    keeper.hold("job-b/protect", "host:2")
    time.sleep(1.0)  # three TTLs: refreshed every 0.2 s (TTL / 3, at least 0.2)
    assert "job-b/protect" not in leases.lapsed()
    keeper.release("job-b/protect")
    assert not rclient.sismember(leases.keys.running(), "job-b/protect")
    keeper.stop_event.set()


def test_a_lease_released_while_it_is_being_checked_has_not_lapsed(rclient: redis.Redis, redis_prefix: str) -> None:
    """The task ends and releases its lease after the reconciler listed ``running`` and before it looked at the
    lease's key: that job goes on (an archive's next task) and must not be failed as worker_lost."""
    leases = make(rclient, redis_prefix, "race", ttl=30.0)
    leases.hold("job-r/protect_archive", "host:1")
    listed = leases.r.srandmember

    class ReleasedMeanwhile:
        def __getattr__(self, name: str) -> object:
            return getattr(rclient, name)

        def srandmember(self, key: str, number: int) -> object:
            ids = listed(key, number)
            leases.release("job-r/protect_archive")  # the task ends here
            return ids

    racing = Leases(ReleasedMeanwhile(), leases.keys, leases.ttl_s)  # type: ignore[arg-type]
    assert racing.lapsed() == []
    assert reconcile(racing, {"job-r": "running"}.get, lambda job: pytest.fail(job), lambda key: None).lost == []


def test_reconcile_fails_each_lost_running_job_once(rclient: redis.Redis, redis_prefix: str) -> None:
    leases = make(rclient, redis_prefix, "reconcile", ttl=0.1)
    statuses = {"lost": "running", "done": "succeeded"}
    for lease in (task_lease("lost", "group-0"), task_lease("lost", "group-1"), task_lease("done", "protect")):
        leases.hold(lease, "host:1")
    failed: list[str] = []
    assert wait_until(lambda: len(leases.lapsed()) == 3, timeout=3)
    done = reconcile(leases, statuses.get, failed.append, lambda key: None)
    assert failed == ["lost"] and done.lost == ["lost"]  # two lapsed groups, one failure; a finished job is left
    assert rclient.scard(leases.keys.running()) == 0  # every lapsed lease forgotten
    assert reconcile(leases, statuses.get, failed.append, lambda key: None).lost == []


def test_overdue_inputs_without_a_job_record_are_deleted(rclient: redis.Redis, redis_prefix: str) -> None:
    leases = make(rclient, redis_prefix, "inputs", ttl=1.0)
    leases.note_input("orphan", "tenants/t/in/orphan/a.png", grace_s=0.0)
    leases.note_input("recorded", "tenants/t/in/recorded/b.png", grace_s=0.0)
    leases.note_input("later", "tenants/t/in/later/c.png", grace_s=3600.0)  # still uploading, perhaps
    deleted: list[str] = []
    statuses = {"recorded": "queued"}
    done = reconcile(leases, statuses.get, lambda job: None, deleted.append)
    assert deleted == done.deleted_inputs == ["tenants/t/in/orphan/a.png"]
    # the overdue notes are gone, the one within its grace stays
    assert rclient.zrange(leases.keys.pending_inputs(), 0, -1) == ["later|tenants/t/in/later/c.png"]
