"""Helpers of the worker tests: photos and hostile zips, Celery worker subprocesses, an in-thread uvicorn."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
import uvicorn
from PIL import Image

from service.config import Settings
from service.heartbeat import live_workers
from service.queue import TASK_DELIVER_WEBHOOK

REPO = Path(__file__).resolve().parents[2]


def deliveries_idle(r: redis.Redis, settings: Settings, job_id: str) -> bool:
    """No webhook delivery of ``job_id`` waits on the io queue or is being processed: kombu keeps a delivered
    message in its ``unacked`` hash until the task finishes (late acks), a retry waiting out its countdown too."""
    prefix = settings.celery_key_prefix
    messages = [json.loads(raw) for raw in r.lrange(f"{prefix}{settings.queue_io}", 0, -1)]
    messages += [json.loads(raw)[0] for raw in r.hvals(f"{prefix}unacked")]
    for msg in messages:
        if msg.get("headers", {}).get("task") != TASK_DELIVER_WEBHOOK:
            continue
        _args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
        if kwargs.get("job_id") == job_id:
            return False
    return True


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll until truthy: bounded in time and in count. Returns the last value."""
    deadline = time.monotonic() + timeout
    value = None
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value or time.monotonic() > deadline:
            break
        time.sleep(interval)
    return value


# ---- photos and archives -------------------------------------------------------------------------


def face_png(width: int = 48, height: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A smooth synthetic 'face' (deterministic) encoded as PNG (or JPEG/WEBP)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    r = min(width, height) * rng.uniform(0.25, 0.4)
    mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < r * r)[..., None]
    skin = rng.uniform(120, 220, 3)
    bg = rng.uniform(20, 120, 3)
    img = np.where(mask, skin, bg) + 12 * np.sin(xx / 5 + yy / 7)[..., None]
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(buf, fmt)
    return buf.getvalue()


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


@dataclass
class ZipSpec:
    """Entries to write; ``raw`` entries get hand-made ZipInfo (symlinks, odd names)."""

    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = field(default_factory=list)

    def add(self, name: str | zipfile.ZipInfo, data: bytes) -> ZipSpec:
        self.entries.append((name, data))
        return self

    def build(self) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in self.entries:
                if isinstance(name, str):
                    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                    info.compress_type = zipfile.ZIP_DEFLATED
                else:
                    info = name
                zf.writestr(info, data)
        return buf.getvalue()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = (0o120777 << 16)
    return info


def central_records(data: bytes) -> list[tuple[int, str]]:
    """(offset of each central directory record, its name)."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    pos = zf.start_dir
    out = []
    for _ in zf.infolist():
        assert data[pos : pos + 4] == b"PK\x01\x02"
        n, m, k = struct.unpack("<HHH", data[pos + 28 : pos + 34])
        out.append((pos, data[pos + 46 : pos + 46 + n].decode()))
        pos += 46 + n + m + k
    return out


def lie_about_size(data: bytes, name: str, declared: int) -> bytes:
    """Declare ``declared`` uncompressed bytes for ``name`` (central directory and local header)."""
    buf = bytearray(data)
    zf = zipfile.ZipFile(io.BytesIO(data))
    info = zf.getinfo(name)
    struct.pack_into("<I", buf, info.header_offset + 22, declared)
    for pos, entry in central_records(data):
        if entry == name:
            struct.pack_into("<I", buf, pos + 24, declared)
    return bytes(buf)


def overlap_entries(data: bytes, name: str, onto: str) -> bytes:
    """Point ``name``'s central directory record at ``onto``'s local header (overlapping entries)."""
    buf = bytearray(data)
    zf = zipfile.ZipFile(io.BytesIO(data))
    target = zf.getinfo(onto)
    for pos, entry in central_records(data):
        if entry == name:
            struct.pack_into("<I", buf, pos + 42, target.header_offset)
    return bytes(buf)


# ---- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProc:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(x) for x in text.split()]


def start_worker(
    queue: str, env: dict[str, str], logdir: Path, pool: str = "solo", extra: tuple[str, ...] = ()
) -> WorkerProc:
    name = f"{queue}-{secrets.token_hex(3)}"
    log = logdir / f"{name}.log"
    cmd = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker",
        "-Q", env.get(f"VEIL_QUEUE_{queue.upper()}", queue), f"--pool={pool}", "-n", f"{name}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO", *extra,
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VEIL_"))}
    full_env.update(env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return WorkerProc(name, proc, log)


def wait_ready(r: redis.Redis, settings: Settings, workers: list[WorkerProc], timeout: float = 45) -> None:
    """Until every worker wrote its heartbeat (it is then consuming); fail with its log otherwise."""

    def ready() -> bool:
        for w in workers:
            if w.proc.poll() is not None:
                return True
        live = live_workers(r, settings)
        return all(any(h.startswith(f"{w.name}@") for h in live) for w in workers)

    wait_for(ready, timeout=timeout, interval=0.2)
    live = live_workers(r, settings)
    for w in workers:
        if w.proc.poll() is not None or not any(h.startswith(f"{w.name}@") for h in live):
            raise RuntimeError(f"worker {w.name} did not start (rc={w.proc.poll()}):\n{w.tail()}")


class ApiServer:
    """The gateway under uvicorn in a thread, on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.thread.start()

        def up() -> bool:
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_for(up, timeout=20, interval=0.1):
            raise RuntimeError("the API did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
