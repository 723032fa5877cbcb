"""One test loop over every registered protection method (timm style), on a tiny random forger."""

from __future__ import annotations

import pytest
import torch

from core.forgers import create_forger
from core.methods import Through, create_method, method_class, method_names
from core.metrics import mse
from core.targets import fixed_targets
from core.train.generator import fit_generator
from core.transforms import rgb_to_ycbcr
from tests.conftest import synthetic_faces

FAST = {"steps": 5}


def one_pass(name: str) -> bool:
    return bool(getattr(method_class(name), "one_pass", False))


def opts(name: str, **options):
    """The options of the registry-loop tests; one-pass (generator) methods get random tiny generators."""
    if one_pass(name):
        options = {"pretrained": False, "config": "tiny", **options}
    if "surrogate_config" in getattr(method_class(name), "option_defaults", {}):
        options = {"surrogate_config": "tiny", "warmup": 20, **options}  # initiative's surrogate: small, brief
    return options


@pytest.fixture(scope="module")
def forger():
    torch.manual_seed(0)
    return create_forger("stargan", config="tiny", pretrained=False)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return synthetic_faces(2, 32, seed=1)


def test_registry_lists_the_iterative_methods() -> None:
    assert {"pgd", "anti-forgery", "dwt-pgd", "retentive", "dwt-chroma", "initiative"} <= set(method_names())
    for name in method_names():
        cls = method_class(name)
        assert cls.paper and cls.budget_units and cls.__doc__, name


@pytest.mark.parametrize("name", method_names())
def test_shape_range_and_grid(name: str, forger, x: torch.Tensor) -> None:
    x_adv = create_method(name, forger, **opts(name, **FAST))(x)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    levels = (x_adv + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4), "output must be on the 8-bit grid"
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("name", method_names())
def test_budget_respected_after_quantisation(name: str, forger, x: torch.Tensor) -> None:
    method = create_method(name, forger, **opts(name, **FAST))
    x_adv = method(x)
    assert method.within_budget(x, x_adv)
    # A larger perturbation is reported as outside the budget: the check can fail.
    assert not method.within_budget(x, (x + 0.5).clamp(-1, 1).round())


@pytest.mark.parametrize("name", method_names())
def test_deterministic_under_seed(name: str, forger, x: torch.Tensor) -> None:
    a = create_method(name, forger, **opts(name, seed=3, **FAST))(x)
    b = create_method(name, forger, **opts(name, seed=3, **FAST))(x)
    c = create_method(name, forger, **opts(name, seed=4, **FAST))(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("name", method_names())
def test_disrupts_more_than_uniform_noise(name: str, forger, x: torch.Tensor) -> None:
    targets = fixed_targets(forger.attributes).expand(x.shape[0], -1, -1)
    if one_pass(name):
        # A generator must first learn: a few dozen steps against the tiny forger (without the VGG term,
        # so the test does not depend on `veil weights`).
        method = create_method(name, forger, **opts(name, steps=10, lambda_feat=0.0))
        fit_generator(method, x, targets, iters=30 + int(method.options.get("warmup", 0)), lr=3e-2)
        x_adv = method(x)
        # A black-box method (initiative) learns to break its surrogate; how that transfers to the real
        # target is a measured number (`veil eval`), not something a few steps on a random network show.
        surrogate = method.auxiliary()
        if surrogate is not None:
            forger = surrogate.freeze()
    else:
        x_adv = create_method(name, forger, steps=10)(x)
    # Zero steps from a random start: uniform noise over the method's own budget.
    noisy = create_method(name, forger, **opts(name, steps=0, random_start=True))(x)
    xs = x.repeat_interleave(5, 0)
    cs = targets.reshape(-1, 5)
    with torch.no_grad():
        ref = forger(xs, cs)
        out_adv, out_noise = forger(x_adv.repeat_interleave(5, 0), cs), forger(noisy.repeat_interleave(5, 0), cs)
        attack, noise = mse(out_adv, ref).mean(), mse(out_noise, ref).mean()
    if not one_pass(name):
        assert attack > 2 * noise, (float(attack), float(noise))
    elif create_method(name, forger, **opts(name)).objective == "distort":
        assert attack > 1.5 * noise, (float(attack), float(noise))
    else:  # nullify: the edit of x_adv moves towards x_adv, far more than with noise
        clean = mse(ref, xs).mean()
        gain_attack = clean - mse(out_adv, x_adv.repeat_interleave(5, 0)).mean()
        gain_noise = clean - mse(out_noise, noisy.repeat_interleave(5, 0)).mean()
        assert gain_attack > 0.005 and gain_attack > 2 * gain_noise, (float(gain_attack), float(gain_noise))


def test_pgd_respects_eps_exactly(forger, x: torch.Tensor) -> None:
    for eps in (2 / 255, 0.05, 0.1):
        x_adv = create_method("pgd", forger, eps=eps, steps=3)(x)
        assert (x_adv - x).abs().max() <= eps + 1e-6


def test_nullify_objective_moves_output_towards_input(forger, x: torch.Tensor) -> None:
    targets = fixed_targets(forger.attributes).expand(x.shape[0], -1, -1)
    cs = targets.reshape(-1, 5)
    x_adv = create_method("pgd", forger, objective="nullify", eps=0.1, steps=20)(x, targets=targets)
    with torch.no_grad():
        before = mse(forger(x.repeat_interleave(5, 0), cs), x.repeat_interleave(5, 0)).mean()
        after = mse(forger(x_adv.repeat_interleave(5, 0), cs), x_adv.repeat_interleave(5, 0)).mean()
    assert after < before


def test_ensemble_of_forgers(x: torch.Tensor) -> None:
    forgers = [create_forger(n, config="tiny", pretrained=False) for n in ("stargan", "attgan")]
    x_adv = create_method("pgd", forgers, steps=3)(x)
    assert x_adv.shape == x.shape


@pytest.mark.parametrize(
    ("options", "message"),
    [({"eps": 0.0}, "eps"), ({"eps": 5.0}, "eps"), ({"steps": -1}, "steps"), ({"objective": "x"}, "objective")],
)
def test_bad_options_are_clear_errors(forger, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_method("pgd", forger, **options)


def test_unknown_method() -> None:
    with pytest.raises(KeyError, match="known: "):
        create_method("nope", [])


def test_anti_forgery_keeps_lightness(forger, x: torch.Tensor) -> None:
    from core.transforms import rgb_to_lab

    x_adv = create_method("anti-forgery", forger, steps=5, eps=8.0)(x)
    d = rgb_to_lab((x_adv + 1) / 2) - rgb_to_lab((x + 1) / 2)
    assert d[:, 0].abs().max() < 1.5  # only 8-bit rounding touches L
    assert d[:, 1:].abs().max() > 2.0  # the a/b channels carry the perturbation


def test_dwt_pgd_keeps_luma(forger, x: torch.Tensor) -> None:
    from core.transforms import rgb_to_ycbcr

    x_adv = create_method("dwt-pgd", forger, steps=5)(x)
    d = rgb_to_ycbcr((x_adv + 1) / 2) - rgb_to_ycbcr((x + 1) / 2)
    assert d[:, 0].abs().max() <= 1.0 / 255 + 1e-6
    assert d[:, 1:].abs().max() > 4.0 / 255


def test_eot_hook_is_used(forger, x: torch.Tensor) -> None:
    calls = []

    def eot(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        calls.append(1)
        return t

    create_method("pgd", forger, steps=2, eot=eot, eot_samples=2)(x)
    assert len(calls) == 4


def test_a_call_through_another_channel_leaves_the_method_as_it_was(forger, x: torch.Tensor) -> None:
    """``through=`` is one call's channel: the method's own (its eot, draws, momentum) is used again after."""
    calls: list[str] = []

    def own(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        calls.append("own")
        return t

    def other(t: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        calls.append("other")
        return t.flip(-1)

    protection = create_method("pgd", forger, steps=2, eot=own)
    first = protection(x)
    protection(x, through=Through(other, samples=3, momentum=0.9))
    assert calls == ["own"] * 2 + ["other"] * 6
    assert protection.through == Through(own, 1, 0.0)
    assert torch.equal(protection(x), first)  # seeded: the same protection as before the other call
    with pytest.raises(ValueError, match="samples"):
        Through(other, samples=0)


@pytest.mark.parametrize("name", [n for n in method_names() if not one_pass(n)])
def test_defends_a_real_face_against_the_shipped_forger(name: str) -> None:
    """The trained (shipped) StarGAN is the default adversary: on a real face (scikit-image's public-domain
    astronaut, aligned as CelebA) each iterative method at its default budget defeats most of its edits,
    where noise of the same budget defeats none."""
    from skimage import data

    from core.faces import align_crop, detect_faces
    from core.image import from_uint8, quantize
    from core.protect import default_classifier, load_forger
    from core.stress import success_rate
    from core.targets import targets_for

    torch.set_num_threads(1)
    forger = load_forger("stargan")
    assert forger.source.endswith(".safetensors")  # trained weights, not a random init
    photo = from_uint8(data.astronaut())
    crop = quantize(align_crop(photo, detect_faces(photo)[0], forger.image_size))
    targets = targets_for(crop, forger.attributes, classifier=default_classifier())
    adv = create_method(name, forger, steps=10, seed=0)(crop, targets=targets)
    noise = create_method(name, forger, steps=0, random_start=True, seed=0)(crop, targets=targets)
    assert success_rate(forger, crop, adv, targets) >= 0.6
    assert success_rate(forger, crop, noise, targets) == 0.0


def test_dwt_pgd_luma_budget(forger, x: torch.Tensor) -> None:
    method = create_method("dwt-pgd", forger, steps=3, luma_eps=0.01)
    x_adv = method(x)
    d = rgb_to_ycbcr((x_adv + 1) / 2) - rgb_to_ycbcr((x + 1) / 2)
    assert d[:, 0].abs().max() > 2 / 255  # luma now moves ...
    assert method.within_budget(x, x_adv) and method.describe()["luma_eps"] == 0.01
    plain = create_method("dwt-pgd", forger, steps=3)
    assert not plain.within_budget(x, x_adv)  # ... which the chroma-only budget does not allow
    too_much = create_method("dwt-pgd", forger, steps=3, luma_eps=0.002)
    assert not too_much.within_budget(x, x_adv)
    with pytest.raises(ValueError, match="luma_eps"):
        create_method("dwt-pgd", forger, luma_eps=-1)
    with pytest.raises(ValueError, match="pgd does not take that option"):
        create_method("pgd", forger, luma_eps=0.01)


def test_pgd_l2_spends_its_energy_budget_and_no_more(forger, x: torch.Tensor) -> None:
    from core.methods.pgd_l2 import psnr_of, rms

    method = create_method("pgd-l2", forger, eps=0.04, steps=5)
    x_adv = method(x)
    per_image = rms(x_adv - x).flatten()
    assert (per_image <= 0.04 + 1 / 255).all() and (per_image >= 0.03).all()
    assert (x_adv - x).abs().max() <= method.linf_cap() + 1e-6
    assert psnr_of(0.02) == pytest.approx(40.0) and method.describe()["psnr_db"] == pytest.approx(34.0, abs=0.05)
    # the projection: a step that leaves the ball is scaled back onto it, one inside is kept as it is
    big = torch.full((1, 3, 4, 4), 0.08)
    assert torch.allclose(method.update(big, torch.zeros_like(big)), torch.full_like(big, 0.04))
    small = torch.full((1, 3, 4, 4), 0.01)
    assert torch.allclose(method.update(small, torch.zeros_like(small)), small)
    # the L-inf cap: a spike is cut at cap_ratio * eps even inside the ball
    capped = create_method("pgd-l2", forger, eps=0.04, steps=1, cap_ratio=2.0)
    spike = torch.zeros(1, 3, 8, 8)
    spike[0, 0, 0, 0] = 0.5
    assert float(capped.update(spike, torch.zeros_like(spike)).max()) == pytest.approx(0.08)
    with pytest.raises(ValueError, match="cap_ratio"):
        create_method("pgd-l2", forger, cap_ratio=0.5)


def test_pgd_l2_chroma_weight_moves_the_energy_to_lightness(forger, x: torch.Tensor) -> None:
    from core.methods.pgd_l2 import rgb_to_weighted, rms, weighted_to_rgb

    d = torch.randn(2, 3, 8, 8) * 0.03
    assert torch.allclose(weighted_to_rgb(rgb_to_weighted(d, 3.0), 3.0), d, atol=1e-6)
    grey = torch.full((1, 3, 2, 2), 0.1)  # a grey change has no chroma, whatever the weight
    assert torch.allclose(rgb_to_weighted(grey, 5.0), torch.cat([grey[:, :1], torch.zeros(1, 2, 2, 2)], 1), atol=1e-6)

    def chroma_share(x_adv: torch.Tensor) -> float:
        ycc = rgb_to_weighted(x_adv - x, 1.0)
        return float(ycc[:, 1:].pow(2).sum() / ycc.pow(2).sum())

    plain = create_method("pgd-l2", forger, eps=0.04, steps=5)(x)
    method = create_method("pgd-l2", forger, eps=0.04, steps=5, chroma_weight=4.0)
    weighted = method(x)
    assert method.within_budget(x, weighted) and float(rms(weighted - x).max()) > 0.03
    assert chroma_share(weighted) < 0.5 * chroma_share(plain)
    with pytest.raises(ValueError, match="chroma_weight"):
        create_method("pgd-l2", forger, chroma_weight=0.5)
