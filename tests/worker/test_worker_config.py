"""Worker settings, the Celery app's delivery guarantees, import hygiene, the model wrapper, the heartbeat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from workertest import face_png

from service.heartbeat import live_workers
from worker import models
from worker.config import WorkerSettings, to_env

REPO = Path(__file__).resolve().parents[2]


def test_settings_refuse_a_visibility_timeout_below_the_longest_task() -> None:
    with pytest.raises(ValueError, match="visibility_timeout"):
        WorkerSettings(celery_visibility_timeout_s=600, task_time_limit_s=900, task_soft_time_limit_s=800)
    with pytest.raises(ValueError, match="webhook retry"):
        WorkerSettings(celery_visibility_timeout_s=1000, webhook_retry_schedule_s=[5, 1800])
    with pytest.raises(ValueError, match="soft"):
        WorkerSettings(task_time_limit_s=10, task_soft_time_limit_s=20)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_WORKER_PRELOAD_FORGERS", "stargan, attgan")
    monkeypatch.setenv("VEIL_WORKER_FORGER_CHECKPOINTS", '{"stargan": "/w/s.safetensors"}')
    monkeypatch.setenv("VEIL_TASK_MAX_DELIVERIES", "5")
    s = WorkerSettings()
    assert s.worker_preload_forgers == ["stargan", "attgan"] and s.task_max_deliveries == 5
    assert s.worker_forger_checkpoints == {"stargan": "/w/s.safetensors"}
    for key in list(to_env(s)):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VEIL_WORKER_PRELOAD_FORGERS", "")
    for key, value in to_env(s).items():
        monkeypatch.setenv(key, value)
    assert WorkerSettings() == s  # to_env round-trips (run_stack and the tests start workers with it)


def test_celery_app_delivery_guarantees() -> None:
    from service.queue import TASK_DELIVER_WEBHOOK, TASK_PACK_ARCHIVE, TASK_PROTECT_GROUP
    from worker.celery_app import app, settings

    conf = app.conf
    assert conf.task_acks_late is True and conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert conf.broker_transport_options["visibility_timeout"] == settings.celery_visibility_timeout_s
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit
    assert conf.worker_soft_shutdown_timeout == settings.worker_soft_shutdown_timeout_s > 0
    assert {q.name for q in conf.task_queues} == {"gpu", "io"}
    routes = conf.task_routes
    assert routes["veil.protect"]["queue"] == routes[TASK_PROTECT_GROUP]["queue"] == "gpu"
    for name in ("veil.protect_archive", TASK_PACK_ARCHIVE, TASK_DELIVER_WEBHOOK):
        assert routes[name]["queue"] == "io"
    import worker.tasks  # noqa: F401  (registers the tasks)

    registered = {name for name in app.tasks if name.startswith("veil.")}
    assert registered == {"veil.protect", "veil.protect_archive", TASK_PROTECT_GROUP, TASK_PACK_ARCHIVE,
                          TASK_DELIVER_WEBHOOK}


def test_importing_the_worker_touches_no_torch() -> None:
    """A prefork parent (and the io worker) must not import torch or core: models load after the fork. The core
    modules it loads are the report contract, core/report.py (pydantic only), which the job view types with,
    and core/interrupt.py (the standard library only), with which every task stops its work between steps."""
    code = (
        "import sys, worker.celery_app, worker.tasks, worker.lifecycle, worker.archive;"
        "print(sorted(m for m in sys.modules if m == 'torch' or m == 'core' or m.startswith(('torch.', 'core.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['core', 'core.interrupt', 'core.report']"


def test_a_child_forked_while_the_parent_holds_the_context_lock_can_start() -> None:
    """The parent's heartbeat thread takes the context lock (the reconciler); a prefork child forked at that
    moment must still reset its context in worker_process_init instead of waiting forever."""
    code = """
import os, threading, time
from worker import context
held, done = threading.Event(), threading.Event()
def hold():
    with context._lock:
        held.set()
        done.wait(10)
threading.Thread(target=hold, daemon=True).start()
held.wait(10)
pid = os.fork()
if pid == 0:
    t = threading.Thread(target=context.reset_context, daemon=True)
    t.start()
    t.join(5)
    os._exit(1 if t.is_alive() else 0)
_, status = os.waitpid(pid, 0)
done.set()
print(os.waitstatus_to_exitcode(status))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", "the forked child hung on the context lock"


def test_a_fork_waits_for_the_heartbeat_round_in_progress() -> None:
    """A prefork parent forks while its heartbeat thread may be mid-round, holding locks of its Redis and S3
    clients that would stay held forever in the child. The fork waits for the round to end, and the child
    starts with the round lock free."""
    code = """
import os, threading, time
from worker import lifecycle
held = threading.Event()
def round_in_progress():
    with lifecycle.ROUND:
        held.set()
        time.sleep(0.5)
        ended.append(time.monotonic())
ended = []
threading.Thread(target=round_in_progress, daemon=True).start()
held.wait(10)
pid = os.fork()
if pid == 0:
    os._exit(0 if lifecycle.ROUND.acquire(timeout=5) else 1)
forked = time.monotonic()
_, status = os.waitpid(pid, 0)
print(bool(ended) and forked >= ended[0], os.waitstatus_to_exitcode(status), lifecycle.ROUND.acquire(timeout=5))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    waited, child, parent = out.stdout.split()
    assert waited == "True", "the fork did not wait for the round to end"
    assert child == "0", "the child could not take the round lock"
    assert parent == "True", "the parent's round lock was left held"


def test_protect_with_targets_and_formats() -> None:
    from core.forgers import create_forger
    from core.methods import create_method

    torch.set_num_threads(1)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    protection = create_method("pgd", [forger], eps=0.05, steps=2, seed=models.job_seed("job_x"))
    image = models.decode(face_png(36, 28), max_pixels=10_000)
    [all_edits] = models.protect(protection, [image], "png")
    [two] = models.protect(protection, [image], "webp", targets=["Male", "Young"])
    assert all_edits.data.startswith(b"\x89PNG") and two.data[8:12] == b"WEBP"
    assert (two.width, two.height) == (36, 28) and two.report["within_budget"] is True
    assert two.report["lossy_output"] is True and all_edits.report["lossy_output"] is False
    json.dumps(two.report)  # plain JSON types only
    with pytest.raises(models.BadOptions, match="Bald"):
        models.protect(protection, [image], "png", targets=["Bald"])
    with pytest.raises(models.BadPhoto, match="pixels"):
        models.decode(face_png(200, 100), max_pixels=10_000)
    assert models.job_seed("job_x") == models.job_seed("job_x") != models.job_seed("job_y")


def test_heartbeat_is_written_and_retired(rclient: redis.Redis, redis_prefix: str) -> None:
    from worker.lifecycle import Heartbeat

    url = os.environ.get("VEIL_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    settings = WorkerSettings(redis_url=url, redis_prefix=f"{redis_prefix}hb:", worker_heartbeat_ttl_s=3)
    key = f"{redis_prefix}hb:workers:gpu@test"
    hb = Heartbeat("gpu@test", ("gpu",), {"pool": "solo"}, settings=settings)
    hb.start()
    try:
        assert live_workers(rclient, settings) == ["gpu@test"]
        info = json.loads(rclient.get(key) or "{}")
        assert info["queues"] == ["gpu"] and info["pool"] == "solo" and 0 < rclient.ttl(key) <= 3
    finally:
        hb.stop()
    assert live_workers(rclient, settings) == []


def test_min_success_retries_with_stronger_budgets_then_fails_the_photo() -> None:
    from core.forgers import create_forger
    from core.methods import create_method

    torch.set_num_threads(1)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    image = models.decode(face_png(36, 28), max_pixels=10_000)
    built: list[float] = []

    def stronger(eps: float) -> Any:
        def make() -> Any:
            built.append(eps)
            return create_method("pgd", [forger], eps=eps, steps=1, seed=1)
        return make

    weak = create_method("pgd", [forger], eps=0.004, steps=1, seed=1)
    # Met at once (every rate is >= 0): no stronger protection is even built.
    [easy] = models.protect(weak, [image], "png", min_success=0.0, stronger=[stronger(0.05)])
    assert easy.error is None and built == []
    assert easy.report["min_success"] == {"required": 0.0, "met": True, "attempts": 1, "core_eps": 0.004}
    # A requirement no photo of a 1-pixel budget meets: every stronger budget is tried, then the photo fails.
    tiny = create_method("pgd", [forger], eps=1 / 255, steps=1, seed=1)
    [hard] = models.protect(tiny, [image], "png", min_success=1.0, stronger=[stronger(0.02), stronger(0.05)])
    assert built == [0.02, 0.05]
    assert hard.report["min_success"]["attempts"] == 3 and hard.report["min_success"]["core_eps"] == 0.05
    assert hard.error is not None and "min_success 1 not met" in hard.error and "3 attempt(s)" in hard.error
    assert hard.report["linf"] > 0.02  # the delivered photo is the strongest attempt's
    from core.protect import meets

    assert not meets({}, 0.0)  # no receipt: never counted as met


def test_previews_are_rendered_as_pngs() -> None:
    from core.forgers import create_forger
    from core.methods import create_method

    forger = create_forger("stargan", config="tiny", pretrained=False)
    protection = create_method("pgd", [forger], eps=0.05, steps=1, seed=1)
    image = models.decode(face_png(36, 28), max_pixels=10_000)
    [result] = models.protect(protection, [image], "png", targets=["Male"], previews=True)
    assert set(result.previews) == {"perturbation", "edits"}
    assert all(v.startswith(b"\x89PNG") for v in result.previews.values())
    assert result.report["previews"]["columns"] == ["input", "Male"]
    [plain] = models.protect(protection, [image], "png")
    assert plain.previews == {} and "previews" not in plain.report


def test_metadata_is_written_only_when_the_job_asks() -> None:
    import io

    from PIL import Image

    from core.forgers import create_forger
    from core.methods import create_method

    forger = create_forger("stargan", config="tiny", pretrained=False)
    protection = create_method("pgd", [forger], eps=0.05, steps=1, seed=1)
    img = Image.open(io.BytesIO(face_png(36, 28)))
    exif = img.getexif()
    exif[0x010F] = "PhoneMaker"
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, exif=exif)
    image = models.decode(buf.getvalue(), max_pixels=10_000)
    [kept] = models.protect(protection, [image], "png", keep_metadata=True)
    [plain] = models.protect(protection, [image], "png")
    assert Image.open(io.BytesIO(kept.data)).getexif()[0x010F] == "PhoneMaker"
    assert len(Image.open(io.BytesIO(plain.data)).getexif()) == 0


def test_a_method_without_its_weights_is_model_unavailable(tiny_checkpoints, monkeypatch) -> None:
    # The tiny checkpoints ship a forger but no generator: a one-pass method cannot run, and says why.
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tiny_checkpoints))
    with pytest.raises(models.ModelUnavailable, match=r"'retentive' unavailable.*veil train generator"):
        models.build(WorkerSettings(), "retentive", ["stargan"], 0.05, {"steps": 1}, seed=1)
    with pytest.raises(models.BadOptions, match="pgd"):
        models.build(WorkerSettings(), "pgd", ["stargan"], 0.05, {"luma_eps": 0.01}, seed=1)


@pytest.mark.slow
def test_a_worker_that_compiles_runs_its_jobs_on_compiled_forgers(tiny_checkpoints, monkeypatch) -> None:
    import core.protect
    from core.image import load_image

    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tiny_checkpoints))
    monkeypatch.setattr(core.protect, "_FORGER_CACHE", {})  # other tests' forgers stay uncompiled
    monkeypatch.setattr(models, "_state", models.ModelState())
    settings = WorkerSettings(worker_compile_forgers=True)
    protection = models.build(settings, "pgd", ["stargan"], 0.05, {"steps": 1}, seed=1)
    assert all(f.compiled for f in protection.forgers)
    spent = models.state().compile_seconds
    assert spent > 0 and models.state().preloaded == ("stargan",)  # compiled as it was preloaded
    again = models.build(settings, "pgd", ["stargan"], 0.05, {"steps": 2}, seed=1)
    assert again.forgers[0] is protection.forgers[0] and models.state().compile_seconds == spent  # once
    [photo] = models.protect(again, [load_image(face_png())], "png")
    assert photo.error is None and photo.report["receipt"]["conditions"]


class _Store:
    def __init__(self, canceled: bool | Exception) -> None:
        self.canceled = canceled

    def is_canceled(self, job_id: str) -> bool:
        if isinstance(self.canceled, Exception):
            raise self.canceled
        return self.canceled


class _Keeper:
    def __init__(self) -> None:
        self.held: list[str] = []

    def hold(self, lease: str, worker: str) -> None:
        self.held.append(lease)

    def release(self, lease: str) -> None:
        self.held.remove(lease)


class _Ctx:
    worker_id = "host:1"

    def __init__(self, canceled: bool | Exception) -> None:
        self.store = _Store(canceled)
        self.keeper = _Keeper()


@pytest.mark.parametrize(("canceled", "limit", "outcome"), [
    (False, 0, "timeout"),  # over the soft limit: the job fails with timeout at the next step
    (True, 3600, None),  # cancelled: the work stops, the job stays cancelled (nothing failed)
    (redis.ConnectionError("down"), 3600, "ran"),  # Redis unreachable while checking: the work goes on
])
def test_job_work_stops_between_steps(
    monkeypatch: pytest.MonkeyPatch, canceled: bool | Exception, limit: int, outcome: str | None
) -> None:
    from core.interrupt import checkpoint
    from worker.tasks import protocol

    failed: list[str] = []
    monkeypatch.setattr(protocol, "fail_job", lambda ctx, job_id, code, message: failed.append(code))
    monkeypatch.setattr(protocol.settings, "task_soft_time_limit_s", limit)
    ran = False
    ctx = _Ctx(canceled)
    with protocol.job_errors(None, ctx, "job-1", "protect"):  # type: ignore[arg-type]
        assert ctx.keeper.held == ["job-1/protect"]  # the task holds its lease while it works
        checkpoint()
        ran = True
    assert failed == ([outcome] if outcome == "timeout" else [])
    assert ran is (outcome == "ran")
    assert ctx.keeper.held == []  # and gives it back however it ends
