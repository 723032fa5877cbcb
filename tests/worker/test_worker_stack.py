"""scripts/run_stack.py without starting anything (the full stack was run by hand; see worker/README.md)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run_stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("veil_run_stack", REPO / "scripts" / "run_stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["veil_run_stack"] = module
    spec.loader.exec_module(module)
    return module


def test_weights_check(run_stack: ModuleType, tmp_path: Path) -> None:
    assert not run_stack.shipped_stargan(tmp_path)
    (tmp_path / "g.safetensors").write_bytes(b"x")
    manifest = {"models": [{"name": "c", "forger": "classifier", "role": "classifier", "file": "g.safetensors"},
                           {"name": "s", "forger": "stargan", "file": "g.safetensors", "default": True}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert run_stack.shipped_stargan(tmp_path)
    (tmp_path / "g.safetensors").unlink()
    assert not run_stack.shipped_stargan(tmp_path)


def test_refuses_to_start_without_weights(run_stack: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VEIL_CHECKPOINTS", raising=False)
    rc = run_stack.main(["--checkpoints", str(tmp_path), "--data-dir", str(tmp_path / "data")])
    assert rc == 2 and "--tiny-forger" in capsys.readouterr().err


def test_redis_probe_and_ports(run_stack: ModuleType) -> None:
    port = run_stack.free_port()
    assert not run_stack.redis_answers(f"redis://127.0.0.1:{port}/0")
    assert run_stack.port_free(port)


def test_curl_session_is_complete(run_stack: ModuleType) -> None:
    text = run_stack.curl_session("http://127.0.0.1:8000", "veil_sk_abc", Path("/d/face.png"), Path("/d/faces.zip"))
    assert "export VEIL=http://127.0.0.1:8000 KEY=veil_sk_abc" in text
    for needle in ("-F file=@/d/face.png", "-F file=@/d/faces.zip", "/outputs", "Prefer: wait=30",
                   'Authorization: Bearer $KEY', "unzip -l"):
        assert needle in text
