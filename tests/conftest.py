"""Shared fixtures: tiny random forgers and small synthetic faces, so tests need no weights or data."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from core.data import celeba_available, default_celeba_dir

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
FIXTURES = Path(__file__).parent / "fixtures"


def synthetic_faces(n: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth face-like blobs on the 8-bit grid in [-1, 1] (deterministic)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    faces = []
    for _ in range(n):
        cx, cy, r = (torch.rand(3, generator=g) * torch.tensor([0.4, 0.4, 0.3]) + torch.tensor([-0.2, -0.2, 0.4]))
        skin = torch.rand(3, generator=g) * 0.6 + 0.2
        bg = torch.rand(3, generator=g) * 0.8 - 0.4
        mask = (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2).float()
        img = bg[:, None, None] * (1 - mask) + skin[:, None, None] * mask
        img = img + 0.05 * torch.sin(6 * xx + 3 * yy)[None]
        faces.append(img)
    x = torch.stack(faces).clamp(-1, 1)
    return torch.round((x + 1) * 127.5) / 127.5 - 1


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """A CLI command run in-process sets torch's threads from the load (``--threads``): not for later tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def faces() -> torch.Tensor:
    return synthetic_faces(2, 32)


@pytest.fixture(scope="session")
def celeba_root() -> Path:
    root = default_celeba_dir()
    if not celeba_available(root):
        pytest.skip("CelebA subset not available")
    return root


@pytest.fixture
def one_thread():
    """Bit-exact comparisons need one CPU thread: multi-threaded reductions may sum in another order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A checkpoints folder (``VEIL_CHECKPOINTS``) whose default stargan is a tiny random network."""
    from core.workflows import write_tiny_checkpoints

    ckpt = tmp_path / "checkpoints"
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(ckpt))
    return write_tiny_checkpoints(ckpt)


# ---- test tiers: `make test-fast` deselects these markers (see pyproject.toml) ----------------------------

STACK_FIXTURES = frozenset({"s3_server", "workers", "api_url"})  # a real S3 server, Celery workers, uvicorn
BROWSER_FIXTURES = frozenset({"page"})  # tests/api/test_app_page.py: headless Chromium


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark by what a test needs (directly or through another fixture): ``stack``, ``browser``."""
    for item in items:
        needs = set(getattr(item, "fixturenames", ()))
        if needs & STACK_FIXTURES:
            item.add_marker(pytest.mark.stack)
        if needs & BROWSER_FIXTURES:
            item.add_marker(pytest.mark.browser)


def load_script(name: str, path: Path) -> ModuleType:
    """A script of the repository (``scripts/*.py``, not part of a package) imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
