"""End-to-end service benchmark: the whole stack on loopback (Redis, MiniStack S3, API, gpu + io workers).

Measures, in one run:

1. Single-photo jobs: ``--jobs`` sequential ``POST /v1/jobs`` of one 256 px face photo (scikit-image's
   astronaut), each waited for with ``Prefer: wait`` (or polled with ``GET /v1/jobs/<id>`` every
   ``--client-poll`` s). End-to-end latency per job, the model time (the job report's ``seconds``: the
   per-photo protection time measured inside the worker) and overhead = e2e - model; p50/p95 of each, plus
   where the overhead goes (from the job record's timestamps). Target: overhead p50 <= 150 ms.
2. Archive throughput: one zip of ``--archive-photos`` photos submitted as one job, photos/s from submit to
   ``succeeded``, against the raw model throughput measured in-process right before with
   ``core.protect.protect_images`` on the same photos, in the worker's batch size
   (``VEIL_PROTECT_BATCH_SIZE``), with the same method, options, forger weights and torch threads
   (the gpu worker runs ``--pool=solo``: one process). Target: archive >= 90 % of raw.

    python benchmarks/service_load.py --checkpoints /tmp/ckpt_try --jobs 30 --archive-photos 200
    python benchmarks/service_load.py --tiny-forger --jobs 10 --archive-photos 40 --steps 2

The stack uses its own Redis key prefix (and Celery key prefix), removed at the end; every process it
started is stopped at the end, errors included. ``--steps`` is applied through a copy of the method
catalogue (``VEIL_METHODS_FILE``), since the API takes no steps option. Rate limiting is off for the
benchmark's key (``VEIL_RATE_LIMIT_REQUESTS=0``). Writes ``benchmarks/results/service-<forger config>.json``
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import shlex
import signal
import statistics
import sys
import tempfile
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import run_stack as rs  # noqa: E402  (scripts/run_stack.py: the stack's building blocks)

RESULTS = Path(__file__).parent / "results"
TERMINAL = {"succeeded", "failed", "canceled"}


# ---- inputs ------------------------------------------------------------------------------------------------


def astronaut() -> Any:
    from PIL import Image

    try:
        from skimage import data as skdata

        return Image.fromarray(skdata.astronaut())
    except Exception:  # any RGB picture will do
        return Image.new("RGB", (512, 512), (180, 140, 120))


def face_png() -> bytes:
    """The 256 px face run_stack.py's demo uses (astronaut crop), as PNG bytes."""
    buf = io.BytesIO()
    astronaut().crop((100, 0, 356, 256)).save(buf, "PNG")
    return buf.getvalue()


def archive_photos(n: int) -> list[tuple[str, bytes]]:
    """n different 256 px JPEG crops around the astronaut's face (shifted a few pixels, some mirrored)."""
    from PIL import ImageOps

    img = astronaut()
    photos = []
    for i in range(n):
        dx, dy = (i * 7) % 41 - 20, (i * 13) % 31
        crop = img.crop((100 + dx, dy, 356 + dx, 256 + dy))
        if i % 2:
            crop = ImageOps.mirror(crop)
        buf = io.BytesIO()
        crop.save(buf, "JPEG", quality=92)
        photos.append((f"faces/photo{i:05d}.jpg", buf.getvalue()))
    return photos


def zip_bytes(photos: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in photos:
            zf.writestr(name, data)
    return buf.getvalue()


# ---- stats ---------------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile with linear interpolation (q in [0, 100])."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p95": pct(values, 95), "mean": statistics.fmean(values) if values else 0.0,
            "min": min(values, default=0.0), "max": max(values, default=0.0)}


def ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


# ---- the stack -------------------------------------------------------------------------------------------------


def forger_config(folder: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        for entry in json.loads((folder / "manifest.json").read_text()).get("models", []):
            generator = entry.get("role", "generator") == "generator"
            if entry.get("forger") == "stargan" and entry.get("default") and generator:
                return str(entry.get("config") or entry.get("name") or "default")
    return "unknown"


def methods_file(data_dir: Path, method: str, steps: int | None) -> Path | None:
    """A copy of the API's method catalogue with ``steps`` as the method's default (None: the shipped one)."""
    if steps is None:
        return None
    from api.methods import DEFAULT_METHODS_FILE

    catalog = json.loads(Path(DEFAULT_METHODS_FILE).read_text())
    for m in catalog["methods"]:
        if m["name"] == method:
            m.setdefault("defaults", {})["steps"] = steps
            break
    else:
        raise rs.StackError(f"unknown method {method!r}")
    path = data_dir / "methods.json"
    path.write_text(json.dumps(catalog, indent=2))
    return path


def start_stack(stack: rs.Stack, redis_url: str, folder: Path, prefix: str,
                extra_env: dict[str, str]) -> dict[str, Any]:
    """S3, API and both workers (the same commands as run_stack.py); returns URLs, env and key."""
    print("starting S3 (MiniStack, AUTH=true) ...", flush=True)
    endpoint, access_key, secret_key = rs.start_s3(stack, rs.free_port(4566))
    api_port = rs.free_port(8000)
    env = {
        **rs.base_env(),
        "VEIL_CHECKPOINTS": str(folder),
        "VEIL_REDIS_URL": redis_url,
        "VEIL_REDIS_PREFIX": prefix,
        "VEIL_CELERY_KEY_PREFIX": prefix,  # own broker queues too: no other stack takes our tasks
        "VEIL_S3_ENDPOINT_URL": endpoint,
        "VEIL_S3_ACCESS_KEY_ID": access_key,
        "VEIL_S3_SECRET_ACCESS_KEY": secret_key,
        "VEIL_S3_BUCKET": rs.BUCKET,
        "VEIL_WEBHOOK_ALLOW_HOSTS": "127.0.0.1,localhost",
        "VEIL_WORKER_HEARTBEAT_TTL_S": "15",
        "VEIL_RATE_LIMIT_REQUESTS": "0",
        "VEIL_PREFER_WAIT_MAX_S": "300",
        **extra_env,
    }
    print("starting the API and the workers ...", flush=True)
    api = stack.spawn("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                              "--port", str(api_port), "--log-level", "warning"], env)
    api_url = f"http://127.0.0.1:{api_port}"
    celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--without-gossip",
              "--without-mingle", "-l", "INFO"]
    gpu = stack.spawn("worker-gpu", [*celery, "-Q", "gpu", "--pool=solo", "-n", f"gpu-{os.getpid()}@%h"], env)
    io_ = stack.spawn("worker-io", [*celery, "-Q", "io", "--pool=threads", "--concurrency=4",
                                    "-n", f"io-{os.getpid()}@%h"], env)
    stack.expect(api, lambda: rs.http_ok(f"{api_url}/healthz"), 60, "the API")
    if not rs.wait_for(lambda: rs.http_ok(f"{api_url}/readyz") or not (gpu.alive() and io_.alive()), timeout=180):
        raise rs.StackError(f"/readyz never answered 200 (see {stack.logs})")
    for child in (gpu, io_):
        if not child.alive():
            raise rs.StackError(f"{child.name} exited (see {child.log}):\n{child.tail()}")
    # readyz needs one heartbeat; make sure the gpu worker has loaded its models too
    if not rs.wait_for(lambda: worker_threads(gpu.tail(1_000_000)) is not None or not gpu.alive(), timeout=180):
        raise rs.StackError(f"the gpu worker never loaded its models (see {gpu.log})")

    from service.config import Settings
    from service.keys import create_key

    settings = Settings(redis_url=redis_url, redis_prefix=prefix)
    key = create_key("bench", settings=settings)
    return {"api": api_url, "key": key, "env": env, "redis_url": redis_url, "gpu": gpu, "s3": endpoint}


def cleanup_redis(redis_url: str, prefix: str) -> int:
    import redis

    r = redis.Redis.from_url(redis_url, socket_timeout=5)
    n = 0
    keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
    for i in range(0, len(keys), 500):
        n += int(r.delete(*keys[i : i + 500]))
    return n


# ---- measurements ------------------------------------------------------------------------------------------------


def wait_job(client: Any, job_id: str, poll: float, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/v1/jobs/{job_id}")
        r.raise_for_status()
        job: dict[str, Any] = r.json()
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job['status']} after {timeout:.0f} s")
        time.sleep(poll)


def single_jobs(client: Any, method: str, n: int, client_poll: float | None, warmup: int) -> dict[str, Any]:
    photo = face_png()
    rows = []
    for i in range(warmup + n):
        headers = {} if client_poll else {"Prefer": "wait=300"}
        t_wall, t0 = time.time(), time.perf_counter()
        r = client.post("/v1/jobs", files={"file": ("face.png", photo, "image/png")}, data={"method": method},
                        headers=headers)
        r.raise_for_status()
        job = r.json()
        if job["status"] not in TERMINAL:
            job = wait_job(client, job["id"], client_poll or 0.05, 600)
        t1 = time.perf_counter()
        t_end_wall = t_wall + (t1 - t0)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job['id']} {job['status']}: {job.get('error')}")
        if i < warmup:
            continue
        e2e = t1 - t0
        entry = job["report"]["photos"][0]
        # Model time = protection + its receipt (both torch compute in the worker), as the report measures them.
        model = float(entry["seconds"]) + float(entry.get("report_seconds", 0.0))
        created, started, finished = ts(job["created_at"]), ts(job["started_at"]), ts(job["finished_at"])
        row = {"job": job["id"], "e2e_s": e2e, "model_s": model, "overhead_s": e2e - model,
               "protection": job["report"]["photos"][0].get("protection")}
        if created and started and finished:
            row.update(
                submit_s=created - t_wall,            # upload, checks, S3 put, record: until the job exists
                queue_s=started - created,            # enqueue -> the gpu worker's start()
                worker_s=finished - started,          # read from S3, decode, protect + report, encode, put, succeed
                worker_nonmodel_s=finished - started - model,
                notify_s=t_end_wall - finished,       # succeed -> the client sees it (Prefer: wait polling)
            )
        rows.append(row)
        print(f"  job {i - warmup + 1}/{n}: e2e {e2e * 1000:.0f} ms, model {model * 1000:.0f} ms", flush=True)
    keys = ["e2e_s", "model_s", "overhead_s", "submit_s", "queue_s", "worker_s", "worker_nonmodel_s", "notify_s"]
    stats = {k: summary([r[k] for r in rows if k in r]) for k in keys}
    return {"jobs": n, "warmup_jobs": warmup, "wait": f"client poll {client_poll} s" if client_poll else "Prefer: wait",
            "stats": stats, "rows": rows}


def raw_throughput(photos: list[tuple[str, bytes]], method: str, params: dict[str, Any], core_eps: float,
                   threads: int, batch_size: int, batch_pixels: int, max_pixels: int) -> dict[str, Any]:
    """protect_images in-process on the same photos, the worker's batches and threads (one process)."""
    import torch

    from core.image import load_image
    from core.protect import build_protection, protect_images

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    device = os.environ.get("VEIL_WORKER_DEVICE", "auto")
    options = {k: v for k, v in params.items() if k not in {"eps", "seed"}}
    protection = build_protection(method, forgers=("stargan",), device=device, eps=core_eps, seed=0, **options)
    images = [load_image(data, max_pixels=max_pixels) for _, data in photos]
    batches: list[list[Any]] = []
    batch: list[Any] = []
    pixels = 0
    for img in images:  # worker/tasks.py batches(): at most batch_size photos and batch_pixels pixels
        w, h = img.size
        if batch and (len(batch) >= batch_size or pixels + w * h > batch_pixels):
            batches.append(batch)
            batch, pixels = [], 0
        batch.append(img)
        pixels += w * h
    if batch:
        batches.append(batch)
    protect_images(protection, batches[0][:1], whole_image=True)  # warm-up (classifier, detector)
    single = in_process_single(protection, max_pixels)
    seconds = []
    start = time.perf_counter()
    for b in batches:
        seconds += [float(p.report["seconds"]) for p in protect_images(protection, b, whole_image=True)]
    elapsed = time.perf_counter() - start
    return {"photos": len(images), "seconds": elapsed, "photos_per_s": len(images) / elapsed,
            "model_seconds_per_photo_mean": statistics.fmean(seconds), "batch_size": batch_size,
            "batches": len(batches), "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(), "single_photo_in_process": single,
            "device": str(next(protection.forgers[0].parameters()).device)}


def in_process_single(protection: Any, max_pixels: int, repeats: int = 5) -> dict[str, Any]:
    """The single-photo job's compute in-process: decode, protect_images (model + report), PNG encode."""
    from core.image import encode_image, load_image
    from core.protect import protect_images

    data = face_png()
    rows = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        image = load_image(data, max_pixels=max_pixels)
        t1 = time.perf_counter()
        [done] = protect_images(protection, [image], whole_image=True)
        t2 = time.perf_counter()
        encode_image(done.x_adv, "PNG", alpha=done.image.alpha, icc_profile=done.image.icc_profile)
        t3 = time.perf_counter()
        model = float(done.report["seconds"])
        rows.append({"decode_s": t1 - t0, "model_s": model, "report_s": t2 - t1 - model, "encode_s": t3 - t2})
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def archive_job(client: Any, method: str, photos: list[tuple[str, bytes]], poll: float) -> dict[str, Any]:
    blob = zip_bytes(photos)
    t_wall, t0 = time.time(), time.perf_counter()
    r = client.post("/v1/jobs", files={"file": ("faces.zip", blob, "application/zip")}, data={"method": method})
    r.raise_for_status()
    job = wait_job(client, r.json()["id"], poll, 3600)
    elapsed = time.perf_counter() - t0
    if job["status"] != "succeeded":
        raise RuntimeError(f"archive job {job['id']} {job['status']}: {job.get('error')}")
    summ = (job.get("report") or {}).get("summary", {})
    created, started, finished = ts(job["created_at"]), ts(job["started_at"]), ts(job["finished_at"])
    return {"photos": len(photos), "zip_bytes": len(blob), "seconds": elapsed,
            "photos_per_s": len(photos) / elapsed, "summary": summ,
            "submit_s": (created - t_wall) if created else None,
            "queue_s": (started - created) if started and created else None,
            "run_s": (finished - started) if finished and started else None, "client_poll_s": poll}


def worker_threads(log_text: str) -> int | None:
    m = re.search(r"models (?:ready )?on \S+ \((\d+) torch threads", log_text)
    return int(m.group(1)) if m else None


# ---- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--checkpoints", type=Path, help="forger weights folder (default: the shipped ones)")
    group.add_argument("--tiny-forger", action="store_true", help="random tiny StarGAN (no weights needed)")
    p.add_argument("--method", default="pgd")
    p.add_argument("--steps", type=int, help="the method's steps (default: the catalogue's)")
    p.add_argument("--jobs", type=int, default=50, help="sequential single-photo jobs")
    p.add_argument("--warmup-jobs", type=int, default=1, help="single-photo jobs run first, not counted")
    p.add_argument("--archive-photos", type=int, default=1000, help="photos in the archive job (0: skip)")
    p.add_argument("--client-poll", type=float, help="poll GET /v1/jobs/<id> every S s instead of Prefer: wait")
    p.add_argument("--archive-poll", type=float, default=0.1, help="archive job polling interval (s)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="used if it answers PING")
    p.add_argument("--data-dir", type=Path, help="default: a new temporary folder (logs kept there)")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    import httpx

    load_start = os.getloadavg()
    started = time.time()
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="veil-bench-"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = rs.Stack(data_dir)
    prefix = f"veilbench-{os.getpid()}:"
    redis_url: str | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.tiny_forger:
            folder = rs.make_tiny_checkpoints(data_dir / "checkpoints")
        else:
            folder = (args.checkpoints or Path(os.environ.get("VEIL_CHECKPOINTS") or REPO / "checkpoints")).resolve()
        if not rs.shipped_stargan(folder):
            raise rs.StackError(f"no StarGAN weights in {folder}/manifest.json: --checkpoints DIR or --tiny-forger")
        os.environ["VEIL_CHECKPOINTS"] = str(folder)  # the in-process raw run loads the same weights
        extra: dict[str, str] = {}
        mfile = methods_file(data_dir, args.method, args.steps)
        if mfile:
            extra["VEIL_METHODS_FILE"] = str(mfile)
        print("starting Redis ...", flush=True)
        redis_url = rs.start_redis(stack, args.redis_url)  # known before anything can write under prefix
        info = start_stack(stack, redis_url, folder, prefix, extra)

        from api.methods import load_catalog
        from worker.config import WorkerSettings

        wsettings = WorkerSettings()  # defaults (+ this process's VEIL_* env, as the workers see it)
        catalog = load_catalog(mfile or wsettings.methods_file)
        method = catalog.method(args.method)
        if method is None:
            raise rs.StackError(f"unknown method {args.method!r}")
        params = dict(method.defaults)
        core_eps = round(method.eps.default * method.core_eps_scale, 10)

        client = httpx.Client(base_url=info["api"], headers={"Authorization": f"Bearer {info['key']}"},
                              timeout=httpx.Timeout(600.0))
        with client:
            print(f"single-photo jobs ({args.jobs}, method {args.method}, params {params}) ...", flush=True)
            singles = single_jobs(client, args.method, args.jobs, args.client_poll, args.warmup_jobs)
            raw = archive = None
            if args.archive_photos > 0:
                photos = archive_photos(args.archive_photos)
                print(f"raw in-process throughput on {len(photos)} photos ...", flush=True)
                raw = raw_throughput(photos, args.method, params, core_eps, wsettings.worker_torch_threads,
                                     wsettings.protect_batch_size, wsettings.protect_batch_pixels,
                                     wsettings.max_image_pixels)
                print(f"  raw: {raw['photos_per_s']:.3f} photos/s", flush=True)
                print(f"archive job ({len(photos)} photos) ...", flush=True)
                archive = archive_job(client, args.method, photos, args.archive_poll)
                print(f"  archive: {archive['photos_per_s']:.3f} photos/s", flush=True)
        gpu_threads = worker_threads(info["gpu"].tail(1_000_000))
        load_end = os.getloadavg()
        import torch

        result: dict[str, Any] = {
            "info": {
                "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
                "started": datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                "wall_s": round(time.time() - started, 1),
                "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                            "torch": torch.__version__, "python": platform.python_version()},
                "load_average_start": [round(x, 2) for x in load_start],
                "load_average_end": [round(x, 2) for x in load_end],
                # No machine paths in committed results: the weights folder relative to the repository.
                "forgers": _relative(folder), "forger_config": forger_config(folder),
                "method": args.method, "params": params, "core_eps": core_eps,
                "worker": {"pool": "solo", "torch_threads": gpu_threads, "device": wsettings.worker_device,
                           "protect_batch_size": wsettings.protect_batch_size,
                           "archive_group_size": wsettings.archive_group_size,
                           "wait_poll_interval_s": wsettings.wait_poll_interval_s},
                "redis_prefix": prefix,
            },
            "single": singles,
            "raw": raw,
            "archive": archive,
        }
        o = singles["stats"]["overhead_s"]["p50"]
        result["targets"] = {"overhead_p50_le_150ms": o <= 0.150}
        if raw and archive:
            result["archive_vs_raw"] = archive["photos_per_s"] / raw["photos_per_s"]
            result["targets"]["archive_ge_90pct_raw"] = result["archive_vs_raw"] >= 0.9
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"service-{result['info']['forger_config']}{'-' + args.tag if args.tag else ''}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print_table(result)
        print(f"\nwrote {out}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except rs.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        if redis_url:
            with contextlib.suppress(Exception):
                print(f"removed {cleanup_redis(redis_url, prefix)} Redis keys under {prefix}", flush=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"stopped (logs kept in {stack.logs})", flush=True)


def print_table(result: dict[str, Any]) -> None:
    s = result["single"]["stats"]

    def ms(k: str, q: str) -> str:
        return f"{s[k][q] * 1000:.0f}" if k in s else "-"

    print(f"\n| single photo ({result['single']['jobs']} jobs, {result['single']['wait']}) | p50 ms | p95 ms |")
    print("|---|---|---|")
    labels = {"e2e_s": "end to end", "model_s": "model (report seconds)", "overhead_s": "**overhead** (e2e - model)",
              "submit_s": "  submit (until the job exists)", "queue_s": "  queued (until the worker starts)",
              "worker_nonmodel_s": "  worker, not model (S3, decode, report, encode, put)",
              "notify_s": "  succeeded -> client sees it"}
    for k, label in labels.items():
        print(f"| {label} | {ms(k, 'p50')} | {ms(k, 'p95')} |")
    if result.get("raw") and result.get("archive"):
        raw, arc = result["raw"], result["archive"]
        print(f"\n| archive ({arc['photos']} photos) | photos/s | s | torch threads |\n|---|---|---|---|")
        print(f"| raw protect_images, batch {raw['batch_size']}, in-process | {raw['photos_per_s']:.3f} | "
              f"{raw['seconds']:.1f} | {raw['torch_threads']} |")
        print(f"| archive job, submit -> succeeded | {arc['photos_per_s']:.3f} | {arc['seconds']:.1f} | "
              f"{result['info']['worker']['torch_threads']} |")
        print(f"| **archive / raw** | {result['archive_vs_raw'] * 100:.1f} % | | |")
        one = raw["single_photo_in_process"]
        print("\nin-process, one photo (median ms): " + ", ".join(f"{k[:-2]} {v * 1000:.0f}" for k, v in one.items()))
    print(f"\ntargets: {result['targets']}; load average start {result['info']['load_average_start']}, "
          f"end {result['info']['load_average_end']}")


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return path.name  # outside the repository (e.g. --tiny-forger's temporary folder)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
