"""core.transforms.eot: expectation over transformation."""

from __future__ import annotations

import pytest
import torch

from core.transforms import DEFAULT_TRANSFORMS, EoT, TransformSpec

ALL = ["identity", "jpeg", "blur", "resize"]


def _image(requires_grad: bool = False) -> torch.Tensor:
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    return x.requires_grad_(requires_grad)


def _draws(eot: EoT, seed: int, n: int = 40) -> list[tuple[str, float]]:
    g = torch.Generator().manual_seed(seed)
    return [(spec.name, param) for spec, param in (eot.sample(g) for _ in range(n))]


def test_default_ranges() -> None:
    eot = EoT.from_names(ALL)
    assert eot.names == ALL
    assert repr(eot) == "EoT(identity, jpeg[50..95], blur[0.5..1.5], resize[0.5..0.9])"
    draws = _draws(eot, 0, n=200)
    assert {name for name, _ in draws} == set(ALL)
    for name, param in draws:
        spec = DEFAULT_TRANSFORMS[name]
        assert spec.low <= param <= spec.high
        if name == "jpeg":
            assert param == int(param)
    qualities = {p for n, p in draws if n == "jpeg"}
    assert len(qualities) > 10  # integer qualities spread over the range


def test_deterministic_given_generator() -> None:
    eot = EoT.from_names(ALL)
    assert _draws(eot, 123) == _draws(eot, 123)
    assert _draws(eot, 123) != _draws(eot, 124)
    x = _image()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    for _ in range(6):
        assert torch.equal(eot(x, g1), eot(x, g2))


def test_global_rng_when_no_generator() -> None:
    eot = EoT.from_names(["blur", "resize"])
    torch.manual_seed(3)
    a = eot(_image())
    torch.manual_seed(3)
    assert torch.equal(eot(_image()), a)


def test_none_is_identity_and_draws_nothing() -> None:
    eot = EoT.none()
    assert eot.is_identity and not EoT.from_names(["jpeg"]).is_identity
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    x = _image()
    assert eot(x, g) is x
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("name", ALL)
def test_gradient_flows(name: str) -> None:
    x = _image(requires_grad=True)
    out = EoT.from_names([name])(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_range_override_and_fixed_parameter() -> None:
    eot = EoT.from_names(["jpeg"], ranges={"jpeg": (80, 80)})
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert eot.sample(g)[1] == 80
    assert torch.equal(g.get_state(), state)  # fixed parameter, single transform: nothing drawn


def test_errors() -> None:
    with pytest.raises(
        ValueError, match=r"unknown EoT transform.*'crop'.*known: identity, jpeg, blur, resize"
    ):
        EoT.from_names(["jpeg", "crop"])
    with pytest.raises(ValueError, match="unknown"):
        EoT.from_names(["jpeg"], ranges={"crop": (0.1, 0.2)})
    with pytest.raises(ValueError, match="at least one"):
        EoT.from_names([])
    with pytest.raises(ValueError, match="low"):
        TransformSpec("blur", lambda x, s: x, 2.0, 1.0)


def test_spread_spectrum_group_draws_both_blurs_over_their_ranges() -> None:
    eot = EoT.from_names(["spread"])
    assert eot.names == ["wideblur", "avgblur"]
    draws = _draws(eot, 1, n=200)
    sigmas = [p for n, p in draws if n == "wideblur"]
    sizes = {p for n, p in draws if n == "avgblur"}
    assert min(sigmas) < 1.0 and max(sigmas) > 2.5 and sizes == {2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0}
    x = _image(requires_grad=True)
    eot(x, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="spread"):
        EoT.from_names(["sprad"])


def test_chain_applies_its_parts_in_order_with_parameters_drawn_from_its_seed() -> None:
    eot = EoT.from_names(["blur+resize"], ranges={"resize": (0.5, 0.5)})
    assert eot.names == ["blur+resize"]
    spec, seed = eot.sample(torch.Generator().manual_seed(3))
    assert 0.0 <= seed < 1.0
    sigma = DEFAULT_TRANSFORMS["blur"].sample_param(torch.Generator().manual_seed(int(seed * 2**31)))
    x = _image()
    expected = DEFAULT_TRANSFORMS["resize"](DEFAULT_TRANSFORMS["blur"](x, sigma), 0.5)
    assert torch.equal(spec(x, seed), expected)
    assert not torch.equal(expected, DEFAULT_TRANSFORMS["blur"](DEFAULT_TRANSFORMS["resize"](x, 0.5), sigma))
    with pytest.raises(ValueError, match="'crop'"):
        EoT.from_names(["framing+crop"])


def test_framing_draws_the_photo_spread_and_keeps_a_flat_image_flat() -> None:
    spec = DEFAULT_TRANSFORMS["framing"]
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(spec(flat, 0.3), flat, atol=1e-6)  # borders repeat edge pixels: nothing invented
    # a centred dot moves and changes size with the draw: the scale spans +-25 % (log), so the dot's
    # area over many draws must vary by well over the 10 % a mere jitter would give
    dot = torch.full((1, 3, 64, 64), -1.0)
    dot[..., 24:40, 24:40] = 1.0
    areas = [float((spec(dot, s / 50) > 0).float().mean()) for s in range(50)]
    assert max(areas) / min(areas) > 1.5
    assert torch.equal(spec(dot, 0.42), spec(dot, 0.42))
    x = _image(requires_grad=True)
    EoT.from_names(["framing+jpeg"])(x, torch.Generator().manual_seed(0)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
