#!/usr/bin/env python3
"""Run the whole Veil service on loopback: Redis, S3 (MiniStack), the API, a gpu and an io worker.

    make run                                   # = .venv/bin/python scripts/run_stack.py
    python scripts/run_stack.py --tiny-forger  # random tiny StarGAN: no shipped weights needed (demo only)

* Redis: the one answering PING at ``--redis-url`` (default ``redis://127.0.0.1:6379/0``), else a
  ``redis-server`` started on loopback if one is installed, else a clear error.
* S3: MiniStack (``python -m ministack``, from the dev extra) with ``AUTH=true`` on ``127.0.0.1``; the
  root key (``test``) creates an IAM user limited to the ``veil`` bucket, and the services use that user's
  key (MiniStack verifies its signatures and enforces its policy; root keys are never verified).
* The API (uvicorn), a gpu worker (``--pool=solo``) and an io worker (``--pool=threads``), all with the same
  ``VEIL_*`` environment. Forgers: the shipped checkpoints (``checkpoints/manifest.json``) unless
  ``--checkpoints DIR`` or ``--tiny-forger``.
* Each stack keeps to its own Redis keys and Celery queues: the key prefix (``--redis-prefix``, by default
  one derived from the data dir) also prefixes the broker's keys, so two stacks on one Redis never take each
  other's tasks.
* A ``demo`` tenant's API key, the URLs and a ready-to-paste curl session are printed. The local webhook
  receiver gets the tenant's secret through its environment (never on a command line), and the stack's
  webhook allow-list is that receiver's exact ``127.0.0.1:port``.
* A process that exits is restarted (after a growing pause, at most ``--max-restarts`` times in a row); only
  then does the stack stop. Ctrl-C (or SIGTERM) stops every process group it started, with bounded waits.

Logs go to ``<data dir>/logs/``; the data dir (the demo photos, MiniStack's objects) is a fresh temporary
folder unless ``--data-dir`` is given, where MiniStack then keeps its objects and state (its IAM user)
across restarts (``S3_PERSIST``, ``PERSIST_STATE``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.request import urlopen

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BUCKET = "veil"
IAM_USER = "veil-service"
TENANT = "demo"
WAIT_TRIES = 10  # the printed session's long-polls of one job (Prefer: wait=30 each): 5 minutes at most


class StackError(RuntimeError):
    """The stack cannot start; the message says why and what to do."""


# ---- small helpers ---------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    value = None
    for _ in range(int(timeout / interval) + 2):
        value = predicate()
        if value or time.monotonic() > deadline:
            break
        time.sleep(interval)
    return value


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(preferred: int | None = None, host: str = "127.0.0.1") -> int:
    if preferred and port_free(preferred, host):
        return preferred
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    try:
        with urlopen(url, timeout=timeout) as r:
            return bool(200 <= r.status < 300)
    except (URLError, OSError, ValueError):
        return False


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def shipped_stargan(checkpoints: Path) -> bool:
    """Whether the manifest lists default stargan generator weights whose file exists."""
    try:
        manifest = json.loads((checkpoints / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    for entry in manifest.get("models", []):
        if entry.get("forger") == "stargan" and entry.get("default") and entry.get("role", "generator") == "generator":
            return (checkpoints / str(entry.get("file", ""))).is_file()
    return False


# ---- processes ---------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    cmd: list[str]
    env: dict[str, str]
    started: float = 0.0  # time.monotonic() of the last start
    restarts: int = 0  # in a row (reset once it ran long enough)
    due: float | None = None  # when an exited child is started again

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-n:]
        return ""


class Stack:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.children: list[Child] = []

    def _start(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Child:
        log = self.logs / f"{name}.log"
        child = Child(name, self._start(cmd, env, log), log, cmd, env, started=time.monotonic())
        self.children.append(child)
        return child

    def respawn(self, child: Child) -> None:
        """Start an exited child again, with its command and environment, appending to its log."""
        child.restarts += 1
        child.due = None
        child.proc = self._start(child.cmd, child.env, child.log)
        child.started = time.monotonic()

    def supervise(self, max_restarts: int = 5, interval: float = 1.0, max_rounds: int | None = None,
                  until: Callable[[], bool] | None = None, backoff_s: float = 1.0,
                  stable_s: float = 300.0) -> Child | None:
        """Restart every child that exits, after ``backoff_s * 2**restarts`` (at most 60 s), while it has
        restarts left (``max_restarts`` in a row; one that ran ``stable_s`` before exiting starts counting
        afresh). Returns the first child out of restarts (the stack then stops), or None once ``until()``
        holds or after ``max_rounds`` rounds of ``interval`` seconds (unbounded: until Ctrl-C)."""
        rounds = itertools.count() if max_rounds is None else range(max_rounds)
        for _ in rounds:
            now = time.monotonic()
            for child in self.children:
                if child.alive():
                    continue
                if child.due is None:  # just exited
                    if now - child.started >= stable_s:
                        child.restarts = 0
                    code = child.proc.returncode
                    if child.restarts >= max_restarts:
                        print(f"{child.name} exited with {code} after {child.restarts} restarts; see {child.log}:\n"
                              f"{child.tail()}", file=sys.stderr, flush=True)
                        return child
                    child.due = now + min(60.0, backoff_s * 2**child.restarts)
                    note = (f"--- {child.name} exited with {code}; restarting in {child.due - now:.1f} s "
                            f"({child.restarts + 1} of {max_restarts}) ---")
                    print(note, file=sys.stderr, flush=True)
                    with contextlib.suppress(OSError), child.log.open("a") as log:
                        log.write(f"\n{note}\n")
                elif now >= child.due:
                    self.respawn(child)
            if until is not None and until():
                return None
            time.sleep(interval)
        return None

    def expect(self, child: Child, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        ok = wait_for(lambda: (not child.alive()) or predicate(), timeout=timeout)
        if not child.alive() or not ok or not predicate():
            raise StackError(f"{what} did not come up (see {child.log}):\n{child.tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every process group (newest first), then SIGKILL what is left; bounded."""
        for child in reversed(self.children):
            if child.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for child in self.children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=5)


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VEIL_", "AWS_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def start_redis(stack: Stack, url: str) -> str:
    if redis_answers(url):
        return url
    server = shutil.which("redis-server")
    if server is None:
        raise StackError(
            f"Redis does not answer at {url} and redis-server is not installed: start one "
            "(apt-get install redis-server) or pass --redis-url"
        )
    port = free_port(6379)
    child = stack.spawn("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(stack.data_dir)], base_env())
    url = f"redis://127.0.0.1:{port}/0"
    stack.expect(child, lambda: redis_answers(url), 20, "redis-server")
    return url


def start_s3(stack: Stack, port: int, persist: bool = False) -> tuple[str, str, str]:
    """MiniStack with AUTH=true; returns (endpoint, access key, secret) of an IAM user limited to the bucket.
    ``persist``: objects (``S3_PERSIST``) and state such as the IAM user (``PERSIST_STATE``, saved when it
    stops) are kept in the data dir and reloaded by the next start."""
    try:
        import boto3
    except ImportError as exc:
        raise StackError("boto3 is missing: pip install -e '.[api,dev]'") from exc
    if subprocess.run([sys.executable, "-c", "import ministack"], capture_output=True).returncode != 0:
        raise StackError("MiniStack is missing: pip install -e '.[dev]' (it is the local S3 server)")
    env = base_env()
    env.update(AUTH="true", SERVICES="s3,iam", GATEWAY_PORT=str(port), BIND_HOST="127.0.0.1",
               MINISTACK_HOST="127.0.0.1", S3_DATA_DIR=str(stack.data_dir / "s3"), LOG_LEVEL="WARNING",
               IOT_MTLS_ENABLED="0", SFTP_ENABLED="0", TMPDIR=str(stack.data_dir))
    if persist:
        env.update(S3_PERSIST="1", PERSIST_STATE="1", STATE_DIR=str(stack.data_dir / "ministack-state"))
    child = stack.spawn("ministack", [sys.executable, "-m", "ministack"], env)
    endpoint = f"http://127.0.0.1:{port}"
    stack.expect(child, lambda: http_ok(f"{endpoint}/_ministack/health"), 40, "MiniStack (S3)")
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                       aws_secret_access_key="test")
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_user(UserName=IAM_USER)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": [
        f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}
    iam.put_user_policy(UserName=IAM_USER, PolicyName="veil-bucket", PolicyDocument=json.dumps(policy))
    for old in iam.list_access_keys(UserName=IAM_USER)["AccessKeyMetadata"]:  # a persisted user's: at most 2
        iam.delete_access_key(UserName=IAM_USER, AccessKeyId=old["AccessKeyId"])
    key = iam.create_access_key(UserName=IAM_USER)["AccessKey"]
    return endpoint, key["AccessKeyId"], key["SecretAccessKey"]


def make_tiny_checkpoints(folder: Path) -> Path:
    """A random tiny StarGAN as the default forger (in a subprocess: this script never imports torch)."""
    code = "import sys, pathlib; from core.workflows import write_tiny_checkpoints as w; w(pathlib.Path(sys.argv[1]))"
    folder.mkdir(parents=True, exist_ok=True)
    run = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=REPO, capture_output=True, text=True)
    if run.returncode != 0:
        raise StackError(f"cannot create the tiny forger: {run.stderr[-1500:]}")
    return folder


def demo_files(folder: Path) -> tuple[Path, Path]:
    """face.png (scikit-image's public-domain astronaut, 256 px) and faces.zip (three crops + a text file)."""
    from PIL import Image

    try:
        from skimage import data as skdata

        img = Image.fromarray(skdata.astronaut()).crop((100, 0, 356, 256))
    except Exception:  # scikit-image is in the core extra; any RGB picture will do
        img = Image.new("RGB", (256, 256), (180, 140, 120))
    face = folder / "face.png"
    img.save(face)
    archive = folder / "faces.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i, size in enumerate((96, 128, 160)):
            path = folder / f"crop{i}.jpg"
            img.resize((size, size)).save(path, quality=92)
            zf.write(path, f"faces/crop{i}.jpg")
        zf.writestr("faces/readme.txt", "not a photo: reported as an error in report.json")
    return face, archive


def start_receiver(stack: Stack, secret: str | None, port: int) -> str:
    """scripts/webhook_receiver.py on loopback for the demo tenant; returns its URL."""
    if not secret:
        raise StackError(f"tenant {TENANT!r} has no webhook secret")
    # The secret through the environment: a command line is visible to every user (ps).
    child = stack.spawn("webhooks", [sys.executable, str(REPO / "scripts" / "webhook_receiver.py"),
                                     "--port", str(port)], {**base_env(), "WEBHOOK_SECRET": secret})
    url = f"http://127.0.0.1:{port}"
    stack.expect(child, lambda: http_ok(f"{url}/events"), 20, "the webhook receiver")
    return url


def wait_job_function() -> str:
    """The session's shell function: long-poll a job until it ends (at most WAIT_TRIES waits of 30 s), then
    print its status and report. The README shows the same function."""
    auth = '-H "Authorization: Bearer $KEY"'
    get = "python3 -c 'import json,sys; j=json.load(sys.stdin); print(%s)'"
    return f"""\
wait_job() {{  # long-poll job $1 until it ends ({WAIT_TRIES} waits of up to 30 s at most), then status and report
  for _ in $(seq {WAIT_TRIES}); do
    case $(curl -sS {auth} -H "Prefer: wait=30" $VEIL/v1/jobs/$1 | {get % 'j["status"]'}) in
      succeeded|failed|canceled) break ;;
    esac
  done
  curl -sS {auth} $VEIL/v1/jobs/$1 | {get % 'j["status"], j["report"]'}
}}
"""


def curl_session(api: str, key: str, face: Path, archive: Path, hooks: str) -> str:
    auth = '-H "Authorization: Bearer $KEY"'
    get = "python3 -c 'import json,sys; j=json.load(sys.stdin); print(%s)'"
    return f"""\
export VEIL={api} HOOKS={hooks} KEY={key}
{wait_job_function()}
# 1. a photo: submit (202, queued), wait until it finishes (the report: psnr, ssim, lpips, ...), download
JOB=$(curl -sS {auth} -F file=@{face} $VEIL/v1/jobs | {get % 'j["id"]'})
wait_job $JOB
curl -sS -o protected.png "$(curl -sS {auth} $VEIL/v1/jobs/$JOB/outputs | {get % 'j["data"][0]["url"]'})"
file protected.png

# 2. an archive (3 photos + a text file): a zip of protected photos with report.json and report.csv
JOB=$(curl -sS {auth} -F file=@{archive} $VEIL/v1/jobs | {get % 'j["id"]'})
wait_job $JOB
curl -sS -o faces-protected.zip "$(curl -sS {auth} $VEIL/v1/jobs/$JOB/outputs | {get % 'j["data"][0]["url"]'})"
unzip -l faces-protected.zip

# 3. a webhook: the local receiver checks each delivery's Standard Webhooks signature with the tenant's secret
JOB=$(curl -sS {auth} -F file=@{face} -F webhook_url=$HOOKS/veil $VEIL/v1/jobs | {get % 'j["id"]'})
wait_job $JOB >/dev/null
sleep 2; curl -sS $HOOKS/events | {get % '[(e["type"], e["verified"]) for e in j]'}
"""


# ---- main --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="used if it answers PING")
    p.add_argument("--redis-prefix", help="of every Redis key, the broker's too (default: one per data dir)")
    p.add_argument("--api-port", type=int, default=8000)
    p.add_argument("--s3-port", type=int, default=4566)
    p.add_argument("--hooks-port", type=int, default=9000, help="the local webhook receiver")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--checkpoints", type=Path, help="forger weights folder (default: the shipped ones)")
    group.add_argument("--tiny-forger", action="store_true", help="random tiny StarGAN (demo without weights)")
    p.add_argument("--data-dir", type=Path,
                   help="logs, demo photos and MiniStack's data, kept across restarts (default: a new temp folder)")
    p.add_argument("--max-restarts", type=int, default=5, help="of one process in a row before the stack stops")
    p.add_argument("--gpu-pool", default="solo", choices=["solo", "prefork"])
    p.add_argument("--exit-after-start", action="store_true", help="stop once everything is up (smoke test)")
    return p.parse_args(argv)


def stack_prefix(args: argparse.Namespace, data_dir: Path) -> str:
    """The stack's Redis key prefix: ``--redis-prefix``, else one derived from the data dir (the same stack
    restarted finds its keys again; two stacks never share them)."""
    if args.redis_prefix:
        return str(args.redis_prefix)
    return f"veil-{hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]}:"


def service_env(args: argparse.Namespace, data_dir: Path, redis_url: str, s3: tuple[str, str, str], hooks_port: int,
                checkpoints_env: dict[str, str] | None = None) -> dict[str, str]:
    """The ``VEIL_*`` environment of the API and the workers."""
    endpoint, access_key, secret_key = s3
    prefix = stack_prefix(args, data_dir)
    return {
        **base_env(),
        **(checkpoints_env or {}),
        "VEIL_REDIS_URL": redis_url,
        "VEIL_REDIS_PREFIX": prefix,
        "VEIL_CELERY_KEY_PREFIX": f"{prefix}celery:",  # this stack's queues: no other stack's worker takes its tasks
        "VEIL_S3_ENDPOINT_URL": endpoint,
        "VEIL_S3_ACCESS_KEY_ID": access_key,
        "VEIL_S3_SECRET_ACCESS_KEY": secret_key,
        "VEIL_S3_BUCKET": BUCKET,
        "VEIL_WEBHOOK_ALLOW_HOSTS": f"127.0.0.1:{hooks_port}",  # the local receiver only (no other loopback port)
        "VEIL_WORKER_HEARTBEAT_TTL_S": "15",
    }


def run(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="veil-stack-"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(data_dir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    # Explicitly: a shell starting this in the background leaves SIGINT ignored, and Ctrl-C must stop it.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        checkpoints_env: dict[str, str] = {}
        if args.tiny_forger:
            checkpoints_env["VEIL_CHECKPOINTS"] = str(make_tiny_checkpoints(data_dir / "checkpoints"))
        elif args.checkpoints:
            checkpoints_env["VEIL_CHECKPOINTS"] = str(args.checkpoints.resolve())
        folder = Path(checkpoints_env.get("VEIL_CHECKPOINTS") or os.environ.get("VEIL_CHECKPOINTS")
                      or REPO / "checkpoints")
        if not shipped_stargan(folder):
            raise StackError(
                f"no StarGAN weights in {folder}/manifest.json (the shipped ones come from the training run). "
                "Use --tiny-forger for a demo with random weights, or --checkpoints DIR."
            )
        print("starting Redis ...", flush=True)
        redis_url = start_redis(stack, args.redis_url)
        print("starting S3 (MiniStack, AUTH=true) ...", flush=True)
        s3 = start_s3(stack, free_port(args.s3_port), persist=args.data_dir is not None)
        endpoint = s3[0]
        api_port = free_port(args.api_port)
        hooks_port = free_port(args.hooks_port)
        env = service_env(args, data_dir, redis_url, s3, hooks_port, checkpoints_env)
        prefix = env["VEIL_REDIS_PREFIX"]
        print("starting the API and the workers ...", flush=True)
        api = stack.spawn("api", [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1",
                                  "--port", str(api_port), "--log-level", "info"], env)
        api_url = f"http://127.0.0.1:{api_port}"
        celery = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--without-gossip",
                  "--without-mingle", "-l", "INFO"]
        gpu = stack.spawn("worker-gpu", [*celery, "-Q", "gpu", f"--pool={args.gpu_pool}", "-n", "gpu@%h"]
                          + (["--concurrency=1"] if args.gpu_pool == "prefork" else []), env)
        io = stack.spawn("worker-io", [*celery, "-Q", "io", "--pool=threads", "--concurrency=4", "-n", "io@%h"], env)
        stack.expect(api, lambda: http_ok(f"{api_url}/healthz"), 60, "the API")
        if not wait_for(lambda: http_ok(f"{api_url}/readyz") or not (gpu.alive() and io.alive()), timeout=120):
            raise StackError(f"/readyz never answered 200 (see {stack.logs})")
        for child in (gpu, io):
            if not child.alive():
                raise StackError(f"{child.name} exited (see {child.log}):\n{child.tail()}")

        from service.config import Settings
        from service.keys import create_key, get_webhook_secret

        settings = Settings(redis_url=redis_url, redis_prefix=prefix)
        key = create_key(TENANT, settings=settings)
        hooks_url = start_receiver(stack, get_webhook_secret(TENANT, settings=settings), hooks_port)
        face, archive = demo_files(data_dir)
        print(f"""
Veil is running (Ctrl-C stops everything).
  API        {api_url}   docs: {api_url}/docs   ready: {api_url}/readyz
  S3         {endpoint}   bucket {BUCKET}, IAM user {IAM_USER} (MiniStack, AUTH=true)
  Redis      {redis_url}   prefix {prefix} (Celery: {env["VEIL_CELERY_KEY_PREFIX"]})
  forgers    {folder}{' (tiny random StarGAN: demo only)' if args.tiny_forger else ''}
  logs       {stack.logs}
  API key    {key}   (tenant {TENANT})
  webhooks   {hooks_url}   (a receiver verifying signatures with {TENANT}'s secret; GET /events)

{curl_session(api_url, key, face, archive, hooks_url)}""", flush=True)
        if args.exit_after_start:
            return 0
        dead = stack.supervise(max_restarts=args.max_restarts)  # restarts what exits; returns when one gives up
        print(f"{dead.name if dead else 'a process'} keeps exiting: stopping the stack", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print(f"stopped (data and logs kept in {data_dir})", flush=True)


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
