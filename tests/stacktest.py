"""The whole stack as ``make run`` starts it (scripts/run_stack.py --tiny-forger), for end-to-end tests.

Free ports and a Redis prefix of its own, so it runs next to a developer's ``make run``; it is stopped with
SIGINT (as Ctrl-C does), then killed if it lingers, and its Redis keys are deleted.

    with running_stack(tmp_path) as stack:
        stack.api_url, stack.key, stack.face, stack.archive, stack.printed
    assert stack.returncode == 0
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
READY_MARKER = "sleep 2; curl"  # the last line of the curl session printed once everything is up
STACK_REDIS_URL = "redis://127.0.0.1:6379/0"  # run_stack.py's default


def load_run_stack() -> ModuleType:
    """scripts/run_stack.py as a module (it is a script, not part of a package)."""
    from tests.conftest import load_script

    return load_script("veil_run_stack", REPO / "scripts" / "run_stack.py")


def read_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """stdout of ``proc`` up to the first line containing ``marker`` (bounded in time)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # a thread: select() cannot see what a text stream has already buffered
        assert proc.stdout is not None
        for line in proc.stdout:  # keeps draining after the marker, so the child never blocks on a full pipe
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} within {timeout} s; output so far:\n{''.join(seen)}")


@dataclass
class RunningStack:
    proc: subprocess.Popen[str]
    printed: str  # everything printed up to the end of the curl session
    returncode: int | None = None  # set once the stack has stopped

    @property
    def session(self) -> str:
        """The ready-to-paste curl session."""
        return self.printed[self.printed.index("export VEIL=") :]

    def _export(self, name: str) -> str:
        match = re.search(rf"\b{name}=(\S+)", self.session)
        assert match, f"no {name}= in the printed session:\n{self.session}"
        return match.group(1)

    @property
    def api_url(self) -> str:
        return self._export("VEIL")

    @property
    def key(self) -> str:
        return self._export("KEY")

    def _file(self, suffix: str) -> Path:
        paths = [Path(p) for p in re.findall(r"-F file=@(\S+)", self.session)]
        found = next((p for p in paths if p.suffix == suffix), None)
        assert found is not None, f"no {suffix} file in the printed session:\n{self.session}"
        return found

    @property
    def face(self) -> Path:
        """The demo photo (scikit-image's astronaut)."""
        return self._file(".png")

    @property
    def archive(self) -> Path:
        """The demo zip: three photos and a text file."""
        return self._file(".zip")


@contextmanager
def running_stack(data_dir: Path, timeout: float = 240) -> Iterator[RunningStack]:
    """scripts/run_stack.py --tiny-forger on free ports, up and printing its session; stopped on exit."""
    free_port = load_run_stack().free_port
    prefix = f"veiltest-stack-{uuid.uuid4().hex[:8]}:"
    ports = [str(free_port()) for _ in range(3)]
    cmd = [sys.executable, str(REPO / "scripts" / "run_stack.py"), "--tiny-forger", "--data-dir", str(data_dir),
           "--redis-prefix", prefix, "--api-port", ports[0], "--s3-port", ports[1], "--hooks-port", ports[2]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    stack = RunningStack(proc, "")
    try:
        stack.printed = read_until(proc, READY_MARKER, timeout=timeout)
        yield stack
    finally:
        stack.returncode = _stop(proc)
        _delete_keys(prefix)


def _stop(proc: subprocess.Popen[str]) -> int:
    """SIGINT (Ctrl-C: run_stack.py stops its children), then SIGKILL of its group if it lingers."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return -signal.SIGKILL


def _delete_keys(prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(STACK_REDIS_URL)
    try:
        keys = list(r.scan_iter(f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
    except redis.RedisError:
        pass  # the stack started a redis-server of its own, gone with it
    finally:
        r.close()
