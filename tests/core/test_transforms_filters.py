"""core.transforms.filters: Gaussian blur and down-then-up rescaling."""

from __future__ import annotations

import pytest
import torch

from core.transforms import GaussianBlur, Rescale, gaussian_blur, gaussian_kernel1d, rescale
from core.transforms.eot import EoT
from core.transforms.filters import default_kernel_size, random_reframe, reframe


@pytest.mark.parametrize(("sigma", "size"), [(0.5, 5), (1.0, 7), (1.5, 11), (2.0, 13)])
def test_kernel(sigma: float, size: int) -> None:
    assert default_kernel_size(sigma) == size  # 2 * ceil(3 sigma) + 1
    k = gaussian_kernel1d(sigma, size, torch.float64)
    assert k.shape == (size,)
    assert torch.allclose(k.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-15)
    assert torch.equal(k, k.flip(0)) and k.argmax() == size // 2


@pytest.mark.parametrize("shape", [(2, 3, 16, 12), (1, 3, 2, 3)])  # the second is smaller than the kernel
def test_blur_of_constant_is_constant(shape: tuple[int, ...]) -> None:
    x = torch.full(shape, 0.37)
    out = gaussian_blur(x, 1.0)
    assert out.shape == x.shape and torch.allclose(out, x, atol=1e-6)


def test_blur_of_impulse_is_the_kernel() -> None:
    x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    x[..., 4, 4] = 1.0
    k = gaussian_kernel1d(1.0, 7, torch.float64)
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[1:8, 1:8] = torch.outer(k, k)
    assert torch.allclose(gaussian_blur(x, 1.0)[0, 0], expected, atol=1e-15)


def test_blur_reflects_at_borders() -> None:
    # Reflect padding mirrors about the edge pixel: a step at the border stays a step, mass is kept.
    x = torch.zeros(1, 1, 1, 8, dtype=torch.float64).expand(1, 1, 8, 8).clone()
    x[..., 0] = 1.0
    out = gaussian_blur(x, 0.5, kernel_size=3)
    k = gaussian_kernel1d(0.5, 3, torch.float64)
    assert torch.allclose(out[0, 0, :, 0], k[1].expand(8))  # centre weight, the mirrored zero adds nothing
    assert torch.allclose(out[0, 0, :, 1], k[0].expand(8))


def test_blur_zero_sigma_and_errors() -> None:
    x = torch.rand(1, 3, 8, 8)
    assert gaussian_blur(x, 0.0) is x
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(x, -1.0)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, 1.0, kernel_size=4)


def test_blur_gradcheck() -> None:
    x = torch.rand(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    # fast_mode checks random projections of the Jacobian: same guarantee in spirit, a fraction of the time.
    assert torch.autograd.gradcheck(lambda t: gaussian_blur(t, 0.8), (x,), fast_mode=True)


def test_rescale_identity_and_shape() -> None:
    x = torch.rand(2, 3, 15, 21)
    assert torch.equal(rescale(x, 1.0), x)
    out = rescale(x, 0.5)
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.allclose(rescale(torch.full((1, 3, 15, 21), -0.4), 0.6), torch.full((1, 3, 15, 21), -0.4))


def test_rescale_removes_frequencies_above_nyquist() -> None:
    # A checkerboard is at the Nyquist frequency, above what a x0.5 or x0.6 image can hold: the
    # antialiased downscale averages it (almost) away, away from the borders where the truncated filter
    # is renormalised. Plain bilinear at x0.6 would alias it into a pattern of amplitude ~0.64.
    x = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0).expand(1, 3, 32, 32)
    assert rescale(x, 0.5)[..., 4:-4, 4:-4].abs().max() < 1e-6
    assert rescale(x, 0.6)[..., 4:-4, 4:-4].abs().max() < 0.02


def test_rescale_gradients_and_errors() -> None:
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: rescale(t, 0.7), (x,), fast_mode=True)
    with pytest.raises(ValueError, match="scale"):
        rescale(x, 0.0)


def test_modules_match_functions() -> None:
    x = torch.rand(1, 3, 12, 12)
    assert torch.equal(GaussianBlur(1.2)(x), gaussian_blur(x, 1.2))
    assert torch.equal(Rescale(0.5)(x), rescale(x, 0.5))


def test_box_blur_exact_values() -> None:
    from core.transforms.filters import box_blur

    impulse = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    impulse[..., 4, 4] = 1.0
    out = box_blur(impulse, 3)
    assert torch.allclose(out[..., 3:6, 3:6], torch.full((3, 3), 1 / 9, dtype=torch.float64))
    assert out.sum().item() == pytest.approx(1.0) and out[..., 2, 4].item() == 0.0
    even = box_blur(impulse, 2)  # the extra pixel after the centre: the impulse reaches up and left
    assert even[..., 3:5, 3:5].flatten().tolist() == [0.25] * 4 and even[..., 5, 5].item() == 0.0
    const = torch.full((2, 3, 7, 5), 0.3)
    assert torch.allclose(box_blur(const, 4), const)
    assert box_blur(const, 1) is const
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: box_blur(t, 3), (x,))
    with pytest.raises(ValueError, match="size"):
        box_blur(const, 0)


def test_reframe_exact_shift_and_identity() -> None:
    x = torch.arange(2 * 3 * 8 * 16, dtype=torch.float32).reshape(2, 3, 8, 16)
    assert reframe(x) is x
    moved = reframe(x, shift=(1 / 16, 0.0))  # the new crop's centre one pixel to the right
    assert torch.allclose(moved[..., :-1], x[..., 1:], atol=1e-3)
    assert torch.equal(moved[..., -1], x[..., -1])  # the border repeats the edge
    down = reframe(x, shift=(0.0, -2 / 8))
    assert torch.allclose(down[..., 2:, :], x[..., :-2, :], atol=1e-3)
    with pytest.raises(ValueError, match="scale"):
        reframe(x, scale=0)


def test_random_reframe_is_seeded_differentiable_and_small() -> None:
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    a, b, c = random_reframe(x, 0.25), random_reframe(x, 0.25), random_reframe(x, 0.75)
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4), size=(32, 32), mode="bilinear")
    assert (random_reframe(smooth, 0.5) - smooth).abs().mean() < 0.05  # a nudge, not a new picture
    assert "reframe" in EoT.from_names(["identity", "reframe"]).names
