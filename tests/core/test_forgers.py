from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoints import CheckpointError, Manifest, ManifestEntry, save_weights
from core.forgers import create_discriminator, create_forger, forger_names
from tests.conftest import FIXTURES


def read_keys(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    rows = []
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        rows.append((key, dims, dtype))
    return rows


@pytest.mark.parametrize("name", forger_names())
def test_every_forger_forward_backward(name: str) -> None:
    forger = create_forger(name, config="tiny", pretrained=False, frozen=False)
    x = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_(True)
    c = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1]])
    y = forger(x, c)
    assert y.shape == x.shape
    assert torch.isfinite(y).all() and y.abs().max() <= 1
    y.pow(2).mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    d_src, d_cls = create_discriminator(name, config="tiny", pretrained=False)(y)
    assert d_cls.shape == (2, 5) and torch.isfinite(d_src).all()


@pytest.mark.parametrize("name", forger_names())
def test_forger_resamples_other_sizes(name: str) -> None:
    forger = create_forger(name, config="tiny", pretrained=False)
    x = torch.rand(1, 3, 48, 40) * 2 - 1
    assert forger(x, torch.zeros(1, 5)).shape == (1, 3, 48, 40)


def test_forger_rejects_bad_shapes() -> None:
    forger = create_forger("stargan", config="tiny", pretrained=False)
    with pytest.raises(ValueError, match="attribute vectors"):
        forger(torch.zeros(2, 3, 32, 32), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="images"):
        forger(torch.zeros(2, 1, 32, 32), torch.zeros(2, 5))


@pytest.mark.parametrize("role", ["G", "D"])
def test_stargan_matches_reference_state_dict(role: str) -> None:
    expected = read_keys(f"stargan_celeba128_{role}.keys.tsv")
    if role == "G":
        module = create_forger("stargan", config="celeba128", pretrained=False).generator
    else:
        module = create_discriminator("stargan", config="celeba128", pretrained=False)
    state = module.state_dict()
    assert [k for k, _, _ in expected] == list(state)
    for key, shape, dtype in expected:
        assert tuple(state[key].shape) == shape, key
        assert str(state[key].dtype) == f"torch.{dtype}", key
    n_params = sum(p.numel() for p in module.parameters())
    assert n_params == (8_430_528 if role == "G" else 44_762_048)


def test_reference_pickle_loads_strict(tmp_path: Path) -> None:
    """A plain torch.save(state_dict) with exactly the reference keys loads with strict=True."""
    shapes = {k: s for k, s, _ in read_keys("stargan_celeba128_G.keys.tsv")}
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(s, generator=g) * 0.02 if k.endswith("weight") or k.endswith("bias")
                 else torch.ones(s) if "var" in k else torch.zeros(s, dtype=torch.long)
                 if "num_batches" in k else torch.zeros(s)) for k, s in shapes.items()}
    path = tmp_path / "200000-G.ckpt"
    torch.save(state, path)
    forger = create_forger("stargan", path)
    assert forger.image_size == 128
    assert torch.equal(forger.generator.state_dict()["main.0.weight"], state["main.0.weight"])
    out = forger(torch.zeros(1, 3, 128, 128), torch.tensor([[1.0, 0, 0, 0, 1]]))
    assert out.shape == (1, 3, 128, 128)


def test_fpgan_is_stargans_networks_under_its_own_name() -> None:
    """core/forgers/fpgan.py registers fpgan with StarGAN's networks and configs (it differs in training)."""
    from core.forgers import arch
    from core.forgers.stargan import STARGAN_CONFIGS, StarGANDiscriminator, StarGANGenerator

    spec = arch("fpgan")
    assert spec.name == "fpgan" and "Fixed-Point GAN" in spec.paper and spec.configs is STARGAN_CONFIGS
    assert isinstance(create_forger("fpgan", config="tiny", pretrained=False).generator, StarGANGenerator)
    assert isinstance(create_discriminator("fpgan", config="tiny", pretrained=False), StarGANDiscriminator)
    assert arch("stargan").name == "stargan"


def test_instance_norm_ignores_running_stats_in_eval() -> None:
    """Like the reference (never switched to eval), outputs use the input's own statistics."""
    forger = create_forger("stargan", config="tiny", pretrained=False, frozen=False)
    x, c = torch.rand(2, 3, 32, 32), torch.zeros(2, 5)
    train_out = forger(x, c)
    forger.freeze()
    for name, buf in forger.generator.named_buffers():
        if name.endswith("running_mean"):
            buf.fill_(5.0)
    assert torch.allclose(forger(x, c), train_out, atol=1e-6)


def test_safetensors_round_trip_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    src = create_forger("stargan", config="tiny", pretrained=False)
    sha = save_weights(src.generator.state_dict(), tmp_path / "sg.safetensors", {"forger": "stargan", "config": "tiny"})
    manifest = Manifest(tmp_path)
    manifest.upsert(ManifestEntry(name="sg-tiny", forger="stargan", file="sg.safetensors", config="tiny",
                                  sha256=sha, default=True))
    manifest.save()
    loaded = create_forger("stargan")  # the manifest default
    x, c = torch.rand(1, 3, 32, 32), torch.zeros(1, 5)
    assert torch.equal(loaded(x, c), src(x, c))
    assert create_forger("stargan", "sg-tiny").source.endswith("sg.safetensors")
    # A corrupted file is refused by its sha256.
    (tmp_path / "sg.safetensors").write_bytes((tmp_path / "sg.safetensors").read_bytes()[:-4] + b"xxxx")
    with pytest.raises(CheckpointError, match="sha256"):
        create_forger("stargan")


def test_missing_and_wrong_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    with pytest.raises(CheckpointError, match="no shipped"):
        create_forger("attgan")
    with pytest.raises(CheckpointError, match="not found"):
        create_forger("stargan", tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot read"):
        create_forger("stargan", bad)
    other = tmp_path / "other.safetensors"
    save_weights(create_forger("attgan", config="tiny", pretrained=False).generator.state_dict(), other,
                 {"config": "tiny"})
    with pytest.raises(CheckpointError, match="does not fit"):
        create_forger("stargan", other)


def test_pickles_load_weights_only(tmp_path: Path) -> None:
    """A pickle that would run code is refused (torch.load weights_only=True)."""

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError):
        create_forger("stargan", path)


def test_manifest_saves_merge_instead_of_overwriting(tmp_path: Path) -> None:
    """An export and a measurement running at once each hold a manifest loaded earlier: neither may drop
    what the other wrote."""
    base = Manifest(tmp_path)
    base.upsert(ManifestEntry(name="s", forger="stargan", file="s.safetensors", config="tiny", default=True))
    base.save()
    exporter, measurer = Manifest(tmp_path), Manifest(tmp_path)
    exporter.upsert(ManifestEntry(name="a", forger="attgan", file="a.safetensors", config="tiny", default=True))
    found = measurer.find("s")
    assert found is not None
    found.info["metrics"] = {"edit_strength": 0.1}
    exporter.save()
    measurer.save()
    final = Manifest(tmp_path)
    assert [e.name for e in final.entries] == ["s", "a"]
    assert final.find("s").info["metrics"] == {"edit_strength": 0.1}  # type: ignore[union-attr]
    assert measurer.find("a") is not None  # the saver sees the merged manifest afterwards


@pytest.mark.slow
def test_a_compiled_forger_edits_as_before_for_any_batch() -> None:
    from core.forgers import compile_forger

    forger = create_forger("stargan", config="tiny", pretrained=False, frozen=True)
    keys = list(forger.state_dict())
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    c = torch.tensor([[1.0, 0, 0, 1, 0], [0, 1, 0, 0, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        eager = forger(x, c)
    xg = x.clone().requires_grad_(True)
    forger(xg, c).pow(2).mean().backward()
    assert compile_forger(forger) > 0 and forger.compiled
    assert compile_forger(forger) == 0.0  # once
    assert list(forger.state_dict()) == keys  # weights and checkpoints untouched
    with torch._dynamo.config.patch(error_on_recompile=True):  # the warm-up covered every batch size
        with torch.no_grad():
            torch.testing.assert_close(forger(x, c), eager, atol=1e-5, rtol=1e-4)
            for n in (1, 20, 40):
                forger(torch.zeros(n, 3, 32, 32), torch.zeros(n, 5))
        xc = x.clone().requires_grad_(True)
        forger(xc, c).pow(2).mean().backward()
    assert xc.grad is not None and xg.grad is not None
    torch.testing.assert_close(xc.grad, xg.grad, atol=1e-5, rtol=1e-4)


def test_a_forger_that_cannot_be_compiled_runs_as_it_was(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from core.forgers import compile_forger

    forger = create_forger("stargan", config="tiny", pretrained=False, frozen=True)
    x, c = torch.rand(2, 3, 32, 32) * 2 - 1, torch.eye(5)[:2]
    with torch.no_grad():
        eager = forger(x, c)

    def broken(self: torch.nn.Module, *args: object, **kwargs: object) -> None:  # as a compiler error would
        def call(*a: object, **k: object) -> None:
            raise RuntimeError("no C compiler")
        self._compiled_call_impl = call

    monkeypatch.setattr(torch.nn.Module, "compile", broken)
    compile_forger(forger)
    assert not forger.compiled and "no C compiler" in caplog.text
    with torch.no_grad():
        torch.testing.assert_close(forger(x, c), eager)
