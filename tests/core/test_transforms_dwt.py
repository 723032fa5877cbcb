"""core.transforms.dwt: Haar DWT wrappers over pytorch_wavelets."""

from __future__ import annotations

import importlib
import sys
import warnings

import pytest
import torch

from core.transforms import DWT, IDWT, dwt, idwt
from core.transforms.dwt import _forward_module, _import_pytorch_wavelets


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_round_trip(levels: int, dtype: torch.dtype) -> None:
    x = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(0), dtype=dtype)
    low, highs = dwt(x, levels)
    assert low.shape == (2, 3, 16 // 2**levels, 24 // 2**levels)
    assert len(highs) == levels
    for j, h in enumerate(highs):  # finest first
        assert h.shape == (2, 3, 3, 16 // 2 ** (j + 1), 24 // 2 ** (j + 1))
        assert h.dtype == dtype
    assert torch.allclose(idwt(low, highs), x, atol=1e-5, rtol=0)


def test_constant_image_has_no_detail() -> None:
    # Haar is orthonormal: each level multiplies a constant's low band by 2 (= sqrt(2) per axis).
    low, highs = dwt(torch.full((1, 1, 8, 8), 0.5), levels=2)
    assert torch.allclose(low, torch.full_like(low, 2.0))
    assert all(h.abs().max() < 1e-6 for h in highs)


def test_energy_preserved() -> None:
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    low, highs = dwt(x, 3)
    energy = low.pow(2).sum() + sum(h.pow(2).sum() for h in highs)
    assert torch.allclose(energy, x.pow(2).sum())


@pytest.mark.parametrize(("size", "levels"), [((15, 16), 1), ((16, 17), 1), ((12, 16), 3)])
def test_size_not_multiple_raises(size: tuple[int, int], levels: int) -> None:
    with pytest.raises(ValueError, match="multiples of 2\\*\\*levels"):
        dwt(torch.zeros(1, 3, *size), levels)


def test_module_cached_per_levels_device_dtype() -> None:
    dwt(torch.zeros(1, 1, 4, 4), 1)
    cpu = torch.device("cpu")
    assert _forward_module(1, cpu, torch.float32) is _forward_module(1, cpu, torch.float32)
    assert _forward_module(1, cpu, torch.float32) is not _forward_module(2, cpu, torch.float32)
    assert _forward_module(1, cpu, torch.float64) is not _forward_module(1, cpu, torch.float32)


def test_gradients_flow() -> None:
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    low, highs = dwt(x, 2)
    (low.sum() + highs[0].pow(2).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # d(low.sum())/dx is 2**levels / 4**levels = 1/4 everywhere for 2 Haar levels; the detail-band term
    # adds 2 * highs * (its filter), so only check the low-band part on a fresh input.
    y = torch.randn(1, 1, 8, 8, requires_grad=True)
    dwt(y, 2)[0].sum().backward()
    assert y.grad is not None and torch.allclose(y.grad, torch.full_like(y, 0.25))


def test_modules_match_functions() -> None:
    x = torch.randn(1, 3, 8, 8)
    low, highs = DWT(levels=2)(x)
    ref_low, ref_highs = dwt(x, 2)
    assert torch.equal(low, ref_low) and all(torch.equal(a, b) for a, b in zip(highs, ref_highs, strict=True))
    assert torch.equal(IDWT()(low, highs), idwt(low, highs))


def _forget_pytorch_wavelets(monkeypatch: pytest.MonkeyPatch) -> None:
    # pkg_resources only warns when first imported: drop it (and pytorch_wavelets) from sys.modules so
    # the next import runs again; monkeypatch puts the original modules back after the test.
    for name in list(sys.modules):
        if name.split(".")[0] in ("pytorch_wavelets", "pkg_resources"):
            monkeypatch.delitem(sys.modules, name)


def test_import_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_pytorch_wavelets(monkeypatch)
    with warnings.catch_warnings(record=True) as control:
        warnings.simplefilter("always")
        importlib.import_module("pytorch_wavelets")
    if not any("pkg_resources" in str(w.message) for w in control):
        pytest.skip("this setuptools does not warn about pkg_resources: nothing to suppress")

    _forget_pytorch_wavelets(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _import_pytorch_wavelets()
    assert not [w for w in caught if "pkg_resources" in str(w.message)]
