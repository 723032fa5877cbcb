"""The one-pass generator methods (retentive, dwt-chroma, initiative): networks, budgets, weights, saliency,
one pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoints import CheckpointError, Manifest, ManifestEntry, save_weights
from core.forgers import create_forger
from core.generators import (
    GENERATOR_CONFIGS,
    PerturbationUNet,
    center_prior,
    count_parameters,
    generator_config,
    saliency_mask,
    spectral_residual,
)
from core.methods import create_method, method_class
from core.protect import protect_images
from core.transforms import rgb_to_ycbcr
from tests.conftest import synthetic_faces
from tests.core.test_protect import photo

GENERATORS = ("retentive", "dwt-chroma", "initiative")


@pytest.fixture(scope="module")
def forger():
    torch.manual_seed(0)
    return create_forger("stargan", config="tiny", pretrained=False)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return synthetic_faces(2, 32, seed=1)


def random_method(name: str, forger, **options):
    return create_method(name, forger, pretrained=False, config="tiny", **options)


def test_unet_any_size_and_configs() -> None:
    net = PerturbationUNet(4, 3, width=4, depth=2)
    for h, w in ((32, 32), (30, 22), (7, 9)):
        assert net(torch.zeros(1, 4, h, w)).shape == (1, 3, h, w)
    assert {"tiny", "compact64", "celeba128"} <= set(GENERATOR_CONFIGS)
    compact = generator_config("compact64")
    assert compact["image_size"] == 64 and compact["config_name"] == "compact64"
    assert count_parameters(PerturbationUNet(4, 3, compact["width"], compact["depth"])) < 1_000_000
    assert generator_config({"image_size": 8, "width": 2, "depth": 1})["noise_channels"] == 1
    with pytest.raises(ValueError, match="known: "):
        generator_config("nope")
    with pytest.raises(ValueError, match="lacks"):
        generator_config({"width": 2})


@pytest.mark.parametrize("name", GENERATORS)
def test_one_pass_flag_and_no_weights_is_a_clear_error(
    name: str, forger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert method_class(name).one_pass
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    with pytest.raises(CheckpointError, match=f"veil train generator --method {name}.*pretrained=False"):
        create_method(name, forger)
    with pytest.raises(CheckpointError, match="not found"):
        create_method(name, forger, checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown option"):
        random_method(name, forger, lambda_nope=1.0)


@pytest.mark.parametrize("eps", [2 / 255, 0.05, 0.1])
def test_retentive_rgb_budget(forger, x: torch.Tensor, eps: float) -> None:
    method = random_method("retentive", forger, eps=eps)
    x_adv = method(x)
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert method.within_budget(x, x_adv)


def test_dwt_chroma_keeps_luma_and_subband_budget(forger, x: torch.Tensor) -> None:
    method = random_method("dwt-chroma", forger, eps=0.04)
    x_adv = method(x)
    d = rgb_to_ycbcr((x_adv + 1) / 2) - rgb_to_ycbcr((x + 1) / 2)
    assert d[:, 0].abs().max() <= 1.0 / 255 + 1e-6
    assert d[:, 1:].abs().max() > 1.0 / 255
    assert method.within_budget(x, x_adv)
    with pytest.raises(ValueError, match="even"):
        method(torch.zeros(1, 3, 31, 32))
    with pytest.raises(ValueError, match="saliency"):
        random_method("dwt-chroma", forger, saliency="nope")


@pytest.mark.parametrize("name", GENERATORS)
def test_noise_input_and_zero_steps(name: str, forger, x: torch.Tensor) -> None:
    # Without random_start the generator sees zeros: the seed no longer matters (same weights).
    a = random_method(name, forger, random_start=False, seed=1)
    b = random_method(name, forger, random_start=False, seed=2)
    b.net.load_state_dict(a.net.state_dict())
    assert torch.equal(a(x), b(x))
    # steps=0 without random start leaves the (8-bit) image as it is.
    assert torch.equal(random_method(name, forger, steps=0, random_start=False)(x), x)


@pytest.mark.parametrize("name", GENERATORS)
def test_one_forward_pass_without_the_forger(name: str, forger, x: torch.Tensor) -> None:
    method = random_method(name, forger)
    net_calls, forger_calls = [], []
    h1 = method.net.register_forward_hook(lambda *a: net_calls.append(torch.is_grad_enabled()))
    h2 = forger.register_forward_hook(lambda *a: forger_calls.append(1))
    try:
        method(x)
    finally:
        h1.remove()
        h2.remove()
    assert net_calls == [False], "one generator pass, without autograd"
    assert forger_calls == [], "inference never runs the forger"


@pytest.mark.parametrize("name", GENERATORS)
def test_protect_pipeline_mixed_sizes(name: str, forger) -> None:
    method = random_method(name, forger)
    images = [photo(32, 32, 0), photo(90, 60, 1)]
    for image, result in zip(images, protect_images(method, images), strict=True):
        assert result.x_adv.shape == image.tensor.shape
        assert result.report["within_budget"] is True


def test_spectral_residual_finds_the_blob() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = (((yy - 20) ** 2 + (xx - 10) ** 2) < 16).float()[None, None]
    sal = spectral_residual(blob)
    assert sal.shape == blob.shape and sal.min() >= 0 and sal.max() == pytest.approx(1.0)
    assert sal[..., 17:24, 7:14].mean() > 3 * sal[..., :8, 24:].mean()
    prior = center_prior((2, 1, 16, 16))
    assert prior.shape == (2, 1, 16, 16) and prior[0, 0, 7:9, 7:9].min() > prior[0, 0, 0, 0]
    mask = saliency_mask(blob, "spectral", floor=0.5)
    assert mask.min() >= 0.5 - 1e-6 and mask.max() <= 1 + 1e-6
    assert torch.equal(saliency_mask(blob, "none"), torch.ones_like(blob))
    with pytest.raises(ValueError, match="known"):
        saliency_mask(blob, "nope")


def ship_forger(directory: Path) -> None:
    """A tiny random StarGAN listed as the shipped default in ``directory`` (VEIL_CHECKPOINTS)."""
    torch.manual_seed(0)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    file = "stargan-tiny.safetensors"
    sha = save_weights(forger.generator.state_dict(), directory / file,
                       {"forger": "stargan", "config": "tiny", "role": "generator"})
    manifest = Manifest(directory)
    manifest.upsert(ManifestEntry(name="stargan-tiny", forger="stargan", file=file, config="tiny", sha256=sha,
                                  default=True))
    manifest.save()


def test_checkpoint_by_path_and_manifest(forger, x: torch.Tensor, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    ship_forger(tmp_path)
    trained = random_method("retentive", forger, eps=0.03, seed=5)
    meta = {"method": "retentive", "config": trained.config, "eps": 0.03, "objective": "nullify",
            "options": {"lambda_mag": 2.0}, "forgers": ["stargan"]}
    path = tmp_path / "retentive-stargan-tiny.safetensors"
    sha = save_weights(trained.net.state_dict(), path, meta)
    loaded = create_method("retentive", forger, checkpoint=path, seed=5)
    assert loaded.eps == 0.03 and loaded.options["lambda_mag"] == 2.0 and loaded.source == str(path)
    assert torch.equal(loaded(x), trained(x))
    with pytest.raises(CheckpointError, match="dwt-chroma"):
        create_method("dwt-chroma", forger, checkpoint=path)
    manifest = Manifest()
    manifest.upsert(ManifestEntry(name="retentive-stargan-tiny", forger="retentive", file=path.name,
                                  config=trained.config, sha256=sha, role="generator-method", default=True,
                                  info={"forgers": ["stargan"]}))
    manifest.save()
    assert torch.equal(create_method("retentive", forger, seed=5)(x), trained(x))  # the shipped default
    assert create_method("retentive", forger, eps=0.01).eps == 0.01  # explicit options win
    with pytest.raises(CheckpointError, match="not retentive"):
        create_method("retentive", forger, checkpoint="stargan-tiny")


def test_a_generator_method_keeps_the_forger_it_was_trained_against(forger, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer default forger ships: a generator method still protects against (and is measured on) the forger
    weights it learnt to break, while iterative methods take the new default."""
    from core.methods.one_pass import trained_forger_weights
    from core.protect import build_protection

    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    ship_forger(tmp_path)  # stargan-tiny, the default the generator is trained against
    trained = random_method("retentive", forger, seed=5)
    path = tmp_path / "retentive-stargan-tiny.safetensors"
    sha = save_weights(trained.net.state_dict(), path, {"method": "retentive", "config": trained.config,
                                                        "forgers": ["stargan"]})
    newer = create_forger("stargan", config="tiny", pretrained=False)
    torch.nn.init.normal_(next(newer.generator.parameters()))
    newer_sha = save_weights(newer.generator.state_dict(), tmp_path / "stargan-newer.safetensors",
                             {"forger": "stargan", "config": "tiny", "role": "generator"})
    manifest = Manifest()
    manifest.upsert(ManifestEntry(name="retentive-stargan-tiny", forger="retentive", file=path.name,
                                  config=trained.config, sha256=sha, role="generator-method", default=True,
                                  info={"forgers": ["stargan"], "forger_weights": ["stargan-tiny.safetensors"]}))
    manifest.upsert(ManifestEntry(name="stargan-newer", forger="stargan", file="stargan-newer.safetensors",
                                  config="tiny", sha256=newer_sha, default=True))
    manifest.save()
    assert trained_forger_weights("retentive", ["stargan"]) == {"stargan": "stargan-tiny"}
    assert trained_forger_weights("retentive", ["attgan"]) == {}  # not among its forgers
    one_pass = build_protection("retentive", ("stargan",))
    assert Path(one_pass.forgers[0].source).name == "stargan-tiny.safetensors"
    assert Path(build_protection("pgd", ("stargan",)).forgers[0].source).name == "stargan-newer.safetensors"
    # an explicit choice of forger weights still wins
    chosen = build_protection("retentive", ("stargan",), checkpoints={"stargan": "stargan-newer"})
    assert Path(chosen.forgers[0].source).name == "stargan-newer.safetensors"
