"""Package boundaries: core imports no web/queue code; api imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN_IN_CORE = ("fastapi", "celery", "redis", "boto3", "botocore", "starlette", "kombu")


def imported_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, timeout=120, check=True)
    return {line.split(".")[0] for line in out.stdout.splitlines()}


def test_core_imports_no_service_code() -> None:
    mods = imported_modules("import core.cli, core.methods, core.forgers, core.metrics, core.protect, "
                            "core.workflows, core.train.forger")
    assert "torch" in mods
    assert not mods & set(FORBIDDEN_IN_CORE)


def test_api_imports_no_torch() -> None:
    pytest.importorskip("fastapi")
    mods = imported_modules("import api.main")
    assert "fastapi" in mods
    assert "torch" not in mods and "core" not in mods
