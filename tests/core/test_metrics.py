from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import pytorch_msssim
import torch

from core import metrics
from core.metrics import (
    LPIPS,
    MSE,
    PSNR,
    SSIM,
    LPIPSUnavailable,
    defended,
    lpips,
    lpips_available,
    mse,
    nullification_error,
    psnr,
    ssim,
    success_rate,
)
from tests.conftest import synthetic_faces


def noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g)).clamp(-1, 1)


# --- mse / psnr ----------------------------------------------------------------------------------------


def test_mse_exact_values() -> None:
    a = torch.zeros(3, 3, 4, 4)
    b = a.clone()
    b[0] += 0.5  # every pixel off by 0.5 -> 0.25
    b[1, :, :2] = 1.0  # half the pixels off by 1 -> 0.5
    assert mse(a, b).tolist() == [0.25, 0.5, 0.0]
    assert mse(a, b).shape == (3,)
    assert torch.equal(mse(a, b), mse(b, a))


def test_mse_matches_torch_mse_loss_per_image() -> None:
    a, b = torch.rand(2, 3, 8, 8) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    for i in range(2):
        assert mse(a, b)[i].item() == pytest.approx(torch.nn.functional.mse_loss(a[i], b[i]).item(), rel=1e-6)


def test_mse_half_precision_does_not_underflow() -> None:
    a = torch.zeros(1, 3, 4, 4, dtype=torch.float16)
    b = a + 2**-10  # squared: 2**-20, below float16's smallest normal
    assert mse(a, b).dtype == torch.float32
    assert mse(a, b).item() == 2**-20


def test_mse_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_psnr_known_value() -> None:
    # 0.1 on [-1, 1] is 0.05 on [0, 1]: mse01 = 0.0025 -> 10 log10(1 / 0.0025) = 26.0206 dB.
    a = torch.zeros(2, 3, 8, 8)
    assert psnr(a, a + 0.1).tolist() == pytest.approx([26.0206, 26.0206], abs=1e-4)
    assert psnr(a, a + 0.1)[0].item() == pytest.approx(10 * math.log10(1 / 0.0025), abs=1e-4)


def test_psnr_full_range_is_zero_db_and_identical_is_inf() -> None:
    black, white = -torch.ones(1, 3, 4, 4), torch.ones(1, 3, 4, 4)
    assert psnr(black, white).item() == pytest.approx(0.0, abs=1e-6)
    same = psnr(white, white)
    assert same.shape == (1,) and math.isinf(same.item()) and same.item() > 0


# --- ssim ----------------------------------------------------------------------------------------------


def test_ssim_identical_is_one(faces: torch.Tensor) -> None:
    assert ssim(faces, faces).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_ssim_decreases_with_noise(faces: torch.Tensor) -> None:
    values = [ssim(faces, noisy(faces, s)).mean().item() for s in (0.01, 0.05, 0.2)]
    assert 1.0 > values[0] > values[1] > values[2]


def test_ssim_is_pytorch_msssim_on_unit_scale(faces: torch.Tensor) -> None:
    other = noisy(faces, 0.1)
    ref = pytorch_msssim.ssim((faces + 1) / 2, (other + 1) / 2, data_range=1.0, size_average=False)
    assert torch.allclose(ssim(faces, other), ref, atol=1e-6)


@pytest.mark.parametrize("size", [5, 6, 10])
def test_ssim_small_images_use_a_smaller_window(size: int) -> None:
    x = synthetic_faces(2, size)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pytorch_msssim warns when it has to skip the smoothing
        assert ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
        assert (ssim(x, noisy(x, 0.2)) < 1).all()


# --- defense outcome -----------------------------------------------------------------------------------


def offsets(values: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean outputs at 0 and adversarial ones offset per image, so mse = offset**2 exactly."""
    clean = torch.zeros(len(values), 3, 2, 2)
    return clean + torch.tensor(values).view(-1, 1, 1, 1), clean


def test_success_rate_counts_pairs_above_threshold() -> None:
    adv, clean = offsets([0.0, 0.2, 0.25, 0.5])  # mse 0, 0.04, 0.0625, 0.25
    assert defended(adv, clean).tolist() == [False, False, True, True]
    assert defended(adv, clean).dtype == torch.bool
    assert success_rate(adv, clean) == 0.5
    assert success_rate(adv, clean, threshold=0.01) == 0.75
    assert success_rate(adv, clean, threshold=1.0) == 0.0


def test_success_threshold_is_strict() -> None:
    adv, clean = offsets([0.25, 0.25, 0.5, 0.0])  # 0.25**2 = 0.0625 exactly in float32
    assert success_rate(adv, clean, threshold=0.0625) == 0.25  # equal is not a success
    assert success_rate(adv, clean, threshold=0.0624) == 0.75


def test_success_rate_of_empty_batch_raises() -> None:
    empty = torch.zeros(0, 3, 2, 2)
    with pytest.raises(ValueError):
        success_rate(empty, empty)


def test_nullification_error_is_mse_to_the_original(faces: torch.Tensor) -> None:
    out = noisy(faces, 0.1)
    assert torch.equal(nullification_error(out, faces), mse(out, faces))
    assert torch.equal(nullification_error(faces, faces), torch.zeros(2))


def test_modules_match_functions(faces: torch.Tensor) -> None:
    other = noisy(faces, 0.05)
    assert torch.equal(MSE()(faces, other), mse(faces, other))
    assert torch.equal(PSNR()(faces, other), psnr(faces, other))
    assert torch.equal(SSIM()(faces, other), ssim(faces, other))


# --- LPIPS without the real weights --------------------------------------------------------------------


def test_lpips_unavailable_on_empty_weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = synthetic_faces(1, 64)
    if lpips_available():
        lpips(x, x)  # a cached network for the real folder must not answer for another folder
    monkeypatch.setenv("VEIL_WEIGHTS", str(tmp_path))
    assert not lpips_available() and not lpips_available("vgg")
    with pytest.raises(LPIPSUnavailable, match="veil weights") as info:
        lpips(x, x)
    assert isinstance(info.value, RuntimeError)
    with pytest.raises(LPIPSUnavailable):
        LPIPS("vgg")


def test_lpips_unknown_net() -> None:
    with pytest.raises(ValueError, match="unknown backbone"):
        lpips_available("squeeze")


# --- LPIPS with the real weights (skipped until `veil weights` has run) --------------------------------

needs_lpips = pytest.mark.skipif(
    not (lpips_available("alex") and lpips_available("vgg")), reason="LPIPS weights absent: run `veil weights`"
)


@pytest.fixture(scope="module")
def faces64() -> torch.Tensor:
    return synthetic_faces(2, 64)


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_identical_is_zero_and_symmetric(net: str, faces64: torch.Tensor) -> None:
    other = noisy(faces64, 0.05)
    with torch.no_grad():
        assert lpips(faces64, faces64, net).tolist() == [0.0, 0.0]
        ab, ba = lpips(faces64, other, net), lpips(other, faces64, net)
    assert ab.shape == (2,) and (ab > 0).all()
    assert torch.allclose(ab, ba, atol=1e-6)


@needs_lpips
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_grows_with_noise(net: str, faces64: torch.Tensor) -> None:
    with torch.no_grad():
        d = [lpips(faces64, noisy(faces64, s), net) for s in (0.01, 0.05, 0.2)]
    assert (d[0] < d[1]).all() and (d[1] < d[2]).all()
    assert (d[0] < 0.2).all()  # 1.3/255 of noise: barely visible


@needs_lpips
def test_lpips_regression_values(faces64: torch.Tensor) -> None:
    # Measured on the converted weights; the conversion reproduces the reference lpips package's
    # torchmetrics doctest values for VGG (0.3493, 0.3566). Guards the key layout and kernel orientation.
    other = noisy(faces64, 0.1)
    with torch.no_grad():
        assert lpips(faces64, other, "alex").tolist() == pytest.approx([0.29816, 0.65396], abs=2e-4)
        assert lpips(faces64, other, "vgg").tolist() == pytest.approx([0.48519, 0.62594], abs=2e-4)


@needs_lpips
def test_lpips_is_per_image_and_differentiable(faces64: torch.Tensor) -> None:
    other = noisy(faces64, 0.1)
    batch = lpips(faces64, other)
    single = torch.cat([lpips(faces64[i : i + 1], other[i : i + 1]) for i in range(2)])
    assert torch.allclose(batch, single, atol=1e-5)
    x = other.clone().requires_grad_(True)
    lpips(faces64, x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@needs_lpips
def test_lpips_rejects_images_below_the_trunk_size() -> None:
    model = metrics.LPIPS("alex")
    assert model.min_side == 31
    with torch.no_grad():
        model(synthetic_faces(1, 31), synthetic_faces(1, 31))
        with pytest.raises(ValueError, match="at least 31"):
            model(synthetic_faces(1, 30), synthetic_faces(1, 30))


@needs_lpips
def test_lpips_layout_changes_speed_not_values(faces64: torch.Tensor) -> None:
    # core.metrics.LPIPS runs its backbone in channels_last for speed; the default layout must agree
    other = noisy(faces64, 0.1)
    model = metrics.LPIPS("alex")
    with torch.no_grad():
        channels_last = model(faces64, other)
        model.memory_format = torch.contiguous_format
        contiguous = model(faces64, other)
    assert contiguous.tolist() == pytest.approx([0.29816, 0.65396], abs=2e-4)
    assert torch.allclose(contiguous, channels_last, atol=1e-6)
