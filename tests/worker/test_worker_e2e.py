"""End to end: the gateway (uvicorn), real Celery workers (gpu + io, --pool=solo), the real Redis and
MiniStack S3 (AUTH=true), and a webhook receiver verifying Standard Webhooks signatures.

Every wait is bounded in time and count (``wait_for``)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from typing import Any, Literal

import httpx
import numpy as np
import pytest
import redis
from apitest import Receiver, S3Server, Tenant
from PIL import Image
from standardwebhooks import Webhook
from workertest import (
    WorkerProc,
    ZipSpec,
    deliveries_idle,
    face_png,
    lie_about_size,
    overlap_entries,
    png_pixels,
    start_worker,
    symlink_info,
    wait_for,
    wait_ready,
)

from service.contract import InputRef
from service.jobs import JobRecord, JobStore
from service.leases import LeaseKeys, task_lease
from service.queue import enqueue_job, make_celery, queue_depth
from service.redisdb import make_redis, new_id
from service.storage import Storage, input_key, output_prefix
from worker.config import WorkerSettings, to_env
from worker.context import WorkerKeys

pytestmark = pytest.mark.usefixtures("workers")

JOB_TIMEOUT = 30.0
LEVELS = 0.05 * 127.5  # pgd's default API eps 0.025 -> core eps 0.05 on [-1, 1] -> 6.4 of 255 levels


# ---- helpers ----------------------------------------------------------------------------------------


@pytest.fixture()
def http(api_url: str, tenant: Tenant) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers=tenant.headers, timeout=10) as client:
        yield client


def wait_job(store: JobStore, job_id: str, timeout: float = JOB_TIMEOUT) -> JobRecord:
    job = wait_for(lambda: (j := store.get(job_id)) is not None and j.terminal and j, timeout=timeout, interval=0.1)
    assert job, f"job {job_id} did not finish in {timeout} s: {store.get(job_id)}"
    return job


def poll_api(http: httpx.Client, job_id: str, timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = http.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in ("succeeded", "failed", "canceled") else None

    body = wait_for(done, timeout=timeout, interval=0.15)
    assert body, f"job {job_id} did not finish in {timeout} s"
    return body


def outputs(http: httpx.Client, job_id: str) -> dict[str, bytes]:
    listing = http.get(f"/v1/jobs/{job_id}/outputs").json()
    return {item["name"]: httpx.get(item["url"], timeout=10).content for item in listing["data"]}


def events(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """Every request the receiver got, signature-verified with standardwebhooks."""
    wh = Webhook(secret)
    return [wh.verify(req["body"], req["headers"]) for req in list(receiver.requests)]


def event_types(receiver: Receiver, secret: str) -> list[str]:
    return [e["type"] for e in events(receiver, secret)]


@pytest.fixture()
def submit_direct(
    wsettings: WorkerSettings, storage: Storage, wstore: JobStore, tenant: Tenant
) -> Callable[..., JobRecord]:
    """Create and enqueue a job as the gateway does, without its input checks (defence in depth) and
    with any method params (slow jobs)."""
    celery_app = make_celery(wsettings)

    def submit(
        data: bytes,
        filename: str,
        kind: Literal["image", "archive"] = "image",
        params: dict[str, Any] | None = None,
        settings: WorkerSettings | None = None,
        enqueue: bool = True,
        **fields: Any,
    ) -> JobRecord:
        s = settings or wsettings
        job_id = new_id("job")
        key = input_key(tenant.name, job_id, filename)
        ctype = "application/zip" if kind == "archive" else "image/png"
        storage.put_bytes(key, data, ctype)
        now = time.time()
        job = JobRecord(
            id=job_id, tenant=tenant.name, kind=kind, method="pgd", forgers=["stargan"], eps=0.025, core_eps=0.05,
            params=params or {"steps": 3, "objective": "distort", "random_start": True},
            input=InputRef(bucket=storage.bucket, key=key, filename=filename, content_type=ctype, size=len(data)),
            output_prefix=output_prefix(tenant.name, job_id), progress_total=1 if kind == "image" else 0,
            created_at=now, expires_at=now + 86400, task_id=job_id, **fields,
        )
        wstore.create(job)
        if enqueue:
            enqueue_job(make_celery(s) if settings else celery_app, job, s)
        return job

    return submit


# ---- photos -----------------------------------------------------------------------------------------


def test_photo_end_to_end(
    http: httpx.Client,
    tenant: Tenant,
    receiver: Receiver,
    secret_of: Callable[[str], str],
    wstore: JobStore,
    wsettings: WorkerSettings,
) -> None:
    assert http.get("/readyz").status_code == 200  # the workers' heartbeats
    receiver.responses = [500]  # the first delivery fails: retried on the schedule
    original = face_png(60, 44, seed=3)
    r = http.post(
        "/v1/jobs",
        files={"file": ("face.png", original, "image/png")},
        data={"webhook_url": receiver.url},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    body = poll_api(http, job_id)
    assert body["status"] == "succeeded", body
    assert body["progress"] == {"done": 1, "total": 1}
    [photo] = body["report"]["photos"]
    for metric in ("psnr", "ssim", "lpips", "linf"):
        assert isinstance(photo[metric], float)
    assert photo["within_budget"] is True and photo["width"] == 60 and photo["height"] == 44
    rate = photo["forgers"]["stargan"]["success_rate"]
    assert isinstance(rate, float)

    files = outputs(http, job_id)
    assert list(files) == ["face.png"]
    protected = files["face.png"]
    assert protected.startswith(b"\x89PNG")
    a, b = png_pixels(original), png_pixels(protected)
    assert a.shape == b.shape == (44, 60, 3)
    diff = np.abs(a - b)
    assert diff.max() > 0 and diff.max() <= np.ceil(LEVELS)

    secret = secret_of(tenant.name)
    assert wait_for(lambda: len(receiver.requests) >= 3, timeout=10)
    broker = make_redis(wsettings)
    assert wait_for(lambda: deliveries_idle(broker, wsettings, job_id) and len(wstore.webhook_attempts(job_id)) == 3,
                    timeout=10)  # every delivery has run: nothing more comes
    got = events(receiver, secret)  # every signature verifies
    assert sorted(e["type"] for e in got) == ["job.completed", "job.started", "job.started"]  # 500, then retried
    completed = next(e for e in got if e["type"] == "job.completed")
    assert completed["data"]["status"] == "succeeded" and completed["data"]["report"]["photos"][0]["psnr"]
    assert completed["data"]["report"]["photos"][0]["forgers"]["stargan"]["success_rate"] == rate  # same report
    pairs = zip(receiver.requests, got, strict=True)
    ids = {req["headers"]["webhook-id"] for req, e in pairs if e["type"] == "job.started"}
    assert len(ids) == 1  # a retry keeps its message id
    attempts = wait_for(lambda: len(a := wstore.webhook_attempts(job_id)) == 3 and a, timeout=5)
    assert sorted((x["event"], x["attempt"], x["status_code"]) for x in attempts) == [
        ("job.completed", 1, 200), ("job.started", 1, 500), ("job.started", 2, 200)
    ]


def test_410_gone_disables_the_webhook(
    http: httpx.Client, tenant: Tenant, receiver: Receiver, wstore: JobStore, wsettings: WorkerSettings
) -> None:
    receiver.responses = [410]
    r = http.post("/v1/jobs", files={"file": ("g.png", face_png(32, 32, seed=4), "image/png")},
                  data={"webhook_url": receiver.url})
    job_id = r.json()["id"]
    assert poll_api(http, job_id)["status"] == "succeeded"
    broker = make_redis(wsettings)
    # every delivery (job.completed, if one was queued) has run: none queued, none being processed
    assert wait_for(lambda: deliveries_idle(broker, wsettings, job_id) and wstore.webhook_disabled(job_id), timeout=10)
    body = http.get(f"/v1/jobs/{job_id}").json()
    assert body["webhook"]["disabled"] is True
    assert [(a["event"], a["status_code"]) for a in body["webhook"]["attempts"]] == [("job.started", 410)]
    assert len(receiver.requests) == 1  # nothing after the 410


def test_bad_photo_fails_with_a_clear_reason(
    http: httpx.Client, tenant: Tenant, receiver: Receiver, secret_of: Callable[[str], str]
) -> None:
    truncated = face_png(64, 64, seed=1)[:200]  # a valid header (the gateway's check), no pixels
    r = http.post("/v1/jobs", files={"file": ("broken.png", truncated, "image/png")},
                  data={"webhook_url": receiver.url})
    assert r.status_code == 202, r.text
    body = poll_api(http, r.json()["id"])
    assert body["status"] == "failed"
    assert body["error"]["code"] == "invalid_image" and "broken.png" in body["error"]["message"]
    secret = secret_of(tenant.name)
    assert wait_for(lambda: "job.failed" in event_types(receiver, secret), timeout=10)
    assert outputs(http, body["id"]) == {}


def test_redelivery_writes_one_output(
    submit_direct: Callable[..., JobRecord], wstore: JobStore, storage: Storage, wsettings: WorkerSettings
) -> None:
    """A worker died after writing the output: the job is 'running' and the task is delivered again."""
    job = submit_direct(face_png(40, 40, seed=7), "me.png", enqueue=False)
    storage.put_bytes(f"{job.output_prefix}me.png", b"partial output of the lost worker", "image/png")
    assert wstore.start(job.id, worker="lost-host:1")
    celery_app = make_celery(wsettings)
    enqueue_job(celery_app, job, wsettings)  # the redelivery
    done = wait_job(wstore, job.id)
    assert done.status == "succeeded", done
    [obj] = storage.list_objects(job.output_prefix)
    assert obj.key == f"{job.output_prefix}me.png"
    first = storage.get_bytes(obj.key)
    assert first.startswith(b"\x89PNG")

    enqueue_job(celery_app, job, wsettings)  # once more, after success: nothing changes
    marker = submit_direct(face_png(32, 32, seed=8), "marker.png")  # the solo worker takes tasks in order
    assert wait_job(wstore, marker.id).status == "succeeded"
    again = wstore.get(job.id)
    assert again is not None and again.finished_at == done.finished_at
    assert [o.key for o in storage.list_objects(job.output_prefix)] == [obj.key]
    assert storage.get_bytes(obj.key) == first  # same seed per job: the same bytes


def test_cancel_before_start_writes_nothing(
    submit_direct: Callable[..., JobRecord], wstore: JobStore, storage: Storage, wsettings: WorkerSettings
) -> None:
    job = submit_direct(face_png(40, 40), "c.png", enqueue=False)
    wstore.cancel(job.id)
    enqueue_job(make_celery(wsettings), job, wsettings)
    marker = submit_direct(face_png(32, 32, seed=2), "marker.png")
    assert wait_job(wstore, marker.id).status == "succeeded"
    got = wstore.get(job.id)
    assert got is not None and got.status == "canceled" and got.started_at is None
    assert storage.list_objects(job.output_prefix) == []


def test_cancel_stops_a_running_protection_between_steps(
    submit_direct: Callable[..., JobRecord], wstore: JobStore, storage: Storage, http: httpx.Client
) -> None:
    """A photo job of 10,000 steps (minutes): cancelled while it runs, its work stops at the next step (the solo
    pool would otherwise run it for hours, with every other job waiting behind it)."""
    job = submit_direct(face_png(40, 40, seed=9), "endless.png",
                        params={"steps": 10_000, "objective": "distort", "random_start": True})
    assert wait_for(lambda: (j := wstore.get(job.id)) is not None and j.status == "running", timeout=20)
    time.sleep(1.0)  # well inside its steps
    answer = http.post(f"/v1/jobs/{job.id}/cancel")
    assert answer.status_code == 200, (answer.text, wstore.get(job.id))
    marker = submit_direct(face_png(32, 32, seed=4), "marker.png")
    assert wait_job(wstore, marker.id).status == "succeeded"
    got = wstore.get(job.id)
    assert got is not None and got.status == "canceled"
    assert storage.list_objects(job.output_prefix) == []


# ---- archives ---------------------------------------------------------------------------------------


def read_zip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def test_archive_with_broken_entries_through_the_api(
    http: httpx.Client, tenant: Tenant, receiver: Receiver, secret_of: Callable[[str], str], wstore: JobStore,
    storage: Storage, wsettings: WorkerSettings,
) -> None:
    spec = ZipSpec()
    photos = {}
    for i in range(20):
        fmt = "JPEG" if i % 5 == 4 else "PNG"
        name = f"photos/face{i:02d}.{'jpg' if fmt == 'JPEG' else 'png'}"
        photos[name] = face_png(24 + 2 * i, 30 + i, seed=100 + i, fmt=fmt)
        spec.add(name, photos[name])
    spec.add("notes.txt", b"not a photo at all")
    spec.add("photos/face03.png", face_png(20, 20, seed=5))  # duplicate name
    spec.add("bomb.bin", bytes(3 * 1024 * 1024))  # declared 3 MiB, over the 1 MiB per-entry limit
    # declares 64 bytes (below) but inflates to 2 MiB; not named .png: the gateway would read it and refuse the zip
    spec.add("liar.bin", b"\x89PNG\r\n\x1a\n" + bytes(2 * 1024 * 1024))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: duplicate name
        data = lie_about_size(spec.build(), "liar.bin", 64)

    r = http.post(
        "/v1/jobs",
        files={"file": ("album.zip", data, "application/zip")},
        data={"webhook_url": receiver.url, "webhook_events": "job.started,job.progress,job.completed"},
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    body = poll_api(http, job_id, timeout=45)
    assert body["status"] == "succeeded", body
    assert body["report"]["summary"] == {"entries": 24, "protected": 20, "errors": 4}
    assert body["progress"] == {"done": 24, "total": 24}

    files = outputs(http, job_id)
    assert set(files) == {"album-protected.zip", "report.json", "report.csv"}
    result = read_zip(files["album-protected.zip"])
    expected = {n.rsplit(".", 1)[0] + ".png" for n in photos}
    assert set(result) == expected | {"report.json", "report.csv"}
    for name, original in photos.items():
        a, b = png_pixels(original), png_pixels(result[name.rsplit(".", 1)[0] + ".png"])
        assert a.shape == b.shape and 0 < np.abs(a - b).max() <= np.ceil(LEVELS) + (2 if name.endswith("jpg") else 0)

    report = json.loads(result["report.json"])
    assert json.loads(files["report.json"]) == report
    by_status: dict[str, list[dict[str, Any]]] = {"ok": [], "error": []}
    for p in report["photos"]:
        by_status[p["status"]].append(p)
    assert all(p["psnr"] and p["within_budget"] and "stargan" in p["forgers"] for p in by_status["ok"])
    errors = {p["name"]: p["error"] for p in by_status["error"]}
    assert set(errors) == {"notes.txt", "photos/face03.png", "bomb.bin", "liar.bin"}
    assert "not an image" in errors["notes.txt"]
    assert "duplicate" in errors["photos/face03.png"]
    assert "limit" in errors["bomb.bin"]
    assert "bigger than declared" in errors["liar.bin"]
    rows = list(csv.DictReader(io.StringIO(result["report.csv"].decode())))
    assert len(rows) == 24 and {r["status"] for r in rows} == {"ok", "error"}
    assert all(float(r["psnr"]) > 0 and r["stargan_success_rate"] != "" for r in rows if r["status"] == "ok")
    assert all(r["error"] for r in rows if r["status"] == "error")

    secret = secret_of(tenant.name)
    assert wait_for(lambda: "job.completed" in event_types(receiver, secret), timeout=10)
    types = event_types(receiver, secret)
    assert types[0] == "job.started" and types[-1] == "job.completed"
    progress = [e for e in events(receiver, secret) if e["type"] == "job.progress"]
    assert 1 <= len(progress) <= 10  # throttled: one per batch at most
    # work objects and fan-out keys are gone
    assert storage.list_objects(f"tenants/{tenant.name}/work/{job_id}/") == []
    r_ = make_redis(wsettings)
    assert not any(r_.exists(k) for k in WorkerKeys(wsettings.redis_prefix).all_for(job_id))


def test_hostile_archive_entries_are_per_photo_errors(
    submit_direct: Callable[..., JobRecord], wstore: JobStore, storage: Storage
) -> None:
    """Entries the gateway refuses at upload are refused by the worker too, one by one."""
    spec = ZipSpec()
    for i in range(3):
        spec.add(f"ok{i}.png", face_png(32, 32, seed=i))
    spec.add("../evil.png", face_png(32, 32, seed=9))
    spec.add("/abs.png", face_png(32, 32, seed=9))
    spec.add(symlink_info("link.png"), b"/etc/passwd")
    spec.add("fake.png", b"GIF89a not really")
    spec.add("ov1.png", face_png(32, 32, seed=10))
    spec.add("ov2.png", face_png(32, 32, seed=11))
    spec.add("folder/", b"")
    spec.add("__MACOSX/._ok0.png", b"resource fork")
    data = overlap_entries(spec.build(), "ov2.png", "ov1.png")
    job = submit_direct(data, "hostile.zip", kind="archive")
    done = wait_job(wstore, job.id)
    assert done.status == "succeeded", done
    assert done.report is not None and done.report["summary"] == {"entries": 9, "protected": 3, "errors": 6}
    report = json.loads(storage.get_bytes(f"{job.output_prefix}report.json"))
    errors = {p["name"]: p["error"] for p in report["photos"] if p["status"] == "error"}
    assert "escapes" in errors["../evil.png"]
    assert "absolute" in errors["/abs.png"]
    assert "symbolic link" in errors["link.png"]
    assert "not an image" in errors["fake.png"]
    assert "overlap" in errors["ov1.png"] and "overlap" in errors["ov2.png"]
    result = read_zip(storage.get_bytes(f"{job.output_prefix}hostile-protected.zip"))
    assert set(result) == {"ok0.png", "ok1.png", "ok2.png", "report.json", "report.csv"}


def test_archive_without_a_single_photo_fails_with_its_report(
    submit_direct: Callable[..., JobRecord], wstore: JobStore, storage: Storage
) -> None:
    job = submit_direct(ZipSpec().add("a.txt", b"x").add("b.png", b"nope").build(), "none.zip", kind="archive")
    done = wait_job(wstore, job.id)
    assert done.status == "failed" and done.error_code == "no_images"
    assert json.loads(storage.get_bytes(f"{job.output_prefix}report.json"))["summary"]["errors"] == 2


def test_cancel_between_batches(
    submit_direct: Callable[..., JobRecord], wstore: JobStore, storage: Storage, wsettings: WorkerSettings,
    http: httpx.Client,
) -> None:
    spec = ZipSpec()
    for i in range(12):
        spec.add(f"f{i}.png", face_png(32, 32, seed=200 + i))
    job = submit_direct(spec.build(), "slow.zip", kind="archive",
                        params={"steps": 80, "objective": "distort", "random_start": True})
    keys = WorkerKeys(wsettings.redis_prefix)
    r = make_redis(wsettings)
    assert wait_for(lambda: r.get(keys.deliveries(job.id, "group-0")) == "1", timeout=20), "group 0 never started"
    # cancel now: whether group 0 is still reading its photos or inside its first batch (2 photos x 80 steps),
    # it stops at the next batch boundary
    assert http.post(f"/v1/jobs/{job.id}/cancel").json()["status"] == "canceled"
    # the group in progress stops at the next batch boundary; the other groups are dropped at once
    assert wait_for(lambda: queue_depth(r, wsettings, "gpu") == 0, timeout=15)
    marker = submit_direct(face_png(32, 32, seed=3), "marker.png")
    assert wait_job(wstore, marker.id).status == "succeeded"
    got = wstore.get(job.id)
    assert got is not None and got.status == "canceled"
    assert len(r.hkeys(keys.results(job.id))) <= 2  # at most the batch that was running
    assert got.progress_done <= 2 and not r.smembers(keys.groups_done(job.id))
    assert r.get(keys.deliveries(job.id, "group-1")) is None  # the later groups never started
    assert storage.list_objects(job.output_prefix) == []  # never packed


# ---- poison input ------------------------------------------------------------------------------------


OwnWorker = Callable[..., tuple[WorkerProc, WorkerSettings]]


@pytest.fixture()
def own_gpu(
    wsettings: WorkerSettings,
    worker_env: dict[str, str],
    rclient: redis.Redis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OwnWorker]:
    """Start gpu workers of their own (their own broker key prefix, so only the jobs sent to them reach them),
    with some settings changed; ready when returned, stopped after the test."""
    started: list[WorkerProc] = []

    def start(name: str, pool: str = "solo", extra: tuple[str, ...] = (), **updates: Any
              ) -> tuple[WorkerProc, WorkerSettings]:
        settings = wsettings.model_copy(update={"celery_key_prefix": f"{wsettings.redis_prefix}celery-{name}:",
                                                **updates})
        proc = start_worker("gpu", {**worker_env, **to_env(settings)}, tmp_path_factory.mktemp(f"{name}-logs"),
                            pool=pool, extra=extra)
        started.append(proc)
        wait_ready(rclient, settings, [proc])
        return proc, settings

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture()
def prefork_gpu(own_gpu: OwnWorker) -> tuple[WorkerProc, WorkerSettings]:
    """In prefork mode: one child, one torch thread."""
    return own_gpu("poison", pool="prefork", extra=("-c", "1"))


def test_poison_input_fails_after_n_tries(
    prefork_gpu: tuple[WorkerProc, WorkerSettings], submit_direct: Callable[..., JobRecord], wstore: JobStore,
    wsettings: WorkerSettings,
) -> None:
    """A photo whose worker process dies every time (here: SIGKILL while protecting, as the OOM killer
    would) is redelivered (acks_late + reject_on_worker_lost) until the delivery counter gives up."""
    proc, settings = prefork_gpu
    job = submit_direct(face_png(40, 40), "poison.png", settings=settings,
                        params={"steps": 5000, "objective": "distort", "random_start": True})
    r = make_redis(wsettings)
    counter = WorkerKeys(wsettings.redis_prefix).deliveries(job.id, "protect")
    killed: list[int] = []
    for attempt in range(1, settings.task_max_deliveries + 1):
        def running(n: int = attempt) -> int | None:
            j = wstore.get(job.id)
            if j is None or j.status != "running" or r.get(counter) != str(n) or not j.worker:
                return None
            pid = int(j.worker.rsplit(":", 1)[1])
            return pid if pid not in killed else None

        pid = wait_for(running, timeout=30, interval=0.1)
        assert pid, f"delivery {attempt} never started: {wstore.get(job.id)}\n{proc.tail()}"
        assert pid in proc.children()
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    done = wait_job(wstore, job.id, timeout=30)
    assert done.status == "failed" and done.error_code == "too_many_attempts", done
    assert f"after {settings.task_max_deliveries} attempts" in (done.error_message or "")
    assert r.get(counter) == str(settings.task_max_deliveries + 1)
    assert proc.proc.poll() is None  # the worker itself lives on


@pytest.fixture()
def doomed_gpu(own_gpu: OwnWorker) -> tuple[WorkerProc, WorkerSettings]:
    """Solo, with 2 s job leases, to be killed."""
    return own_gpu("doomed", job_lease_ttl_s=2.0)


def test_a_job_whose_worker_was_killed_fails_as_worker_lost(
    doomed_gpu: tuple[WorkerProc, WorkerSettings], submit_direct: Callable[..., JobRecord], wstore: JobStore,
    receiver: Receiver, tenant: Tenant, secret_of: Callable[[str], str], wsettings: WorkerSettings,
) -> None:
    """SIGKILL the whole (solo) worker mid-job: nothing redelivers the message before the broker's visibility
    timeout (hours), so the job would stay running; its lease lapses and the other workers fail it, once, with
    one terminal webhook."""
    proc, settings = doomed_gpu
    job = submit_direct(face_png(40, 40, seed=11), "doomed.png", settings=settings,
                        params={"steps": 10_000, "objective": "distort", "random_start": True},
                        webhook_url=receiver.url, webhook_events=["job.completed", "job.failed"])
    assert wait_for(lambda: (j := wstore.get(job.id)) is not None and j.status == "running", timeout=30), (
        wstore.get(job.id), proc.tail())
    os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(timeout=10)
    # lease TTL 2 s, the live workers reconcile every 2 s (heartbeat TTL 6 s / 3)
    done = wait_job(wstore, job.id, timeout=20)
    assert done.status == "failed" and done.error_code == "worker_lost", done
    # nothing of the dead worker's is left in Redis: its lease and its entry in the running set are gone
    keys = LeaseKeys(settings.redis_prefix)
    r = make_redis(settings)
    assert not r.exists(keys.lease(task_lease(job.id, "protect")))
    assert wait_for(lambda: not r.sismember(keys.running(), task_lease(job.id, "protect")), timeout=10)
    broker = make_redis(wsettings)
    assert wait_for(lambda: len(receiver.requests) >= 1 and deliveries_idle(broker, wsettings, job.id), timeout=15)
    time.sleep(3)  # more reconciler rounds: still one
    assert [e["type"] for e in events(receiver, secret_of(tenant.name))] == ["job.failed"]


def test_a_decompression_bomb_under_the_pixel_cap_ends_in_bounded_time(
    submit_direct: Callable[..., JobRecord], wstore: JobStore, storage: Storage, wsettings: WorkerSettings,
) -> None:
    """A few kilobytes of PNG that decode to the pixel cap, without a face: protected whole, measured at a
    bounded size (core.protect.QUALITY_SIDE, core.receipt.WHOLE_PHOTO_SIDE), done, and the worker goes on."""
    side = int(wsettings.max_image_pixels**0.5)
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (90, 120, 150)).save(buf, "PNG", optimize=True)
    assert len(buf.getvalue()) < 20_000
    job = submit_direct(buf.getvalue(), "bomb.png")
    done = wait_job(wstore, job.id, timeout=45)
    assert done.status == "succeeded", done
    assert done.report is not None and done.report["photos"][0]["protection"] == "whole_image"
    assert len([o for o in storage.list_objects(job.output_prefix) if o.key.endswith(".png")]) == 1
    marker = submit_direct(face_png(32, 32, seed=6), "after-bomb.png")
    assert wait_job(wstore, marker.id).status == "succeeded"


@pytest.fixture()
def impatient_gpu(own_gpu: OwnWorker) -> tuple[WorkerProc, WorkerSettings]:
    """Solo, whose S3 calls time out after 1 s (3 attempts each)."""
    return own_gpu("impatient", s3_timeout_s=1.0)


def test_s3_frozen_longer_than_a_retry_ends_each_job_once(
    impatient_gpu: tuple[WorkerProc, WorkerSettings], submit_direct: Callable[..., JobRecord], wstore: JobStore,
    storage: Storage, s3_server: S3Server,
) -> None:
    """S3 stops answering (SIGSTOP) for longer than a storage call and its retry: each job still ends exactly
    once (succeeded with its one output, or failed as unavailable with none), and the worker lives on."""
    proc, settings = impatient_gpu
    jobs = [submit_direct(face_png(36, 36, seed=20 + i), f"frozen{i}.png", settings=settings) for i in range(3)]
    with s3_server.frozen(12.0):
        pass
    marker = submit_direct(face_png(32, 32, seed=5), "after.png", settings=settings)
    for job in [*jobs, marker]:
        done = wait_job(wstore, job.id, timeout=60)
        outputs = [o for o in storage.list_objects(job.output_prefix) if not o.key.endswith(".json")]
        if done.status == "succeeded":
            assert len(outputs) == 1, (done, outputs)
        else:
            assert done.status == "failed" and done.error_code == "unavailable" and outputs == [], done
    assert wait_job(wstore, marker.id).status == "succeeded"
    assert proc.proc.poll() is None, proc.tail()


def test_previews_and_min_success_through_the_api(http: httpx.Client) -> None:
    r = http.post("/v1/jobs", files={"file": ("face.png", face_png(60, 44, seed=5), "image/png")},
                  data={"previews": "true", "min_success": "0", "strength": "low"})
    assert r.status_code == 202, r.text
    body = poll_api(http, r.json()["id"])
    assert body["status"] == "succeeded", body
    [photo] = body["report"]["photos"]
    assert photo["min_success"]["met"] is True and photo["min_success"]["attempts"] == 1
    assert set(photo["receipt"]["conditions"]) == {"clean", "jpeg90", "jpeg75", "webp80", "resize0.5", "blur1",
                                                   "noise"}
    previews = photo["previews"]
    assert previews["perturbation"] == "previews/face-perturbation.png"
    assert previews["edits"] == "previews/face-edits.png" and previews["columns"][0] == "input"
    files = outputs(http, body["id"])
    assert sorted(files) == ["face.png", "previews/face-edits.png", "previews/face-perturbation.png"]
    assert png_pixels(files["previews/face-perturbation.png"]).shape == (44, 60, 3)
    assert all(data.startswith(b"\x89PNG") for data in files.values())
