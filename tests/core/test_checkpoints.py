"""The one weight resolver (core.checkpoints.resolve_weights): weights named by manifest entry, by file, or
by default for a (kind, role); its errors; and the three loaders (forgers, generator methods, the
classifier) going through it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoints import CheckpointError, Manifest, ManifestEntry, resolve_weights, save_weights


def ship(directory: Path, name: str, kind: str, role: str, default: bool = False, **info: object) -> Path:
    """A tiny weights file listed in ``directory``'s manifest."""
    path = directory / f"{name}.safetensors"
    sha = save_weights({"w": torch.zeros(1)}, path, {"config": "tiny"})
    manifest = Manifest(directory)
    manifest.upsert(ManifestEntry(name=name, forger=kind, file=path.name, config="tiny", sha256=sha, role=role,
                                  default=default, info=dict(info)))
    manifest.save()
    return path


@pytest.fixture
def shipped(tmp_path: Path) -> Manifest:
    ship(tmp_path, "sg-a", "stargan", "generator")
    ship(tmp_path, "sg-b", "stargan", "generator", default=True)
    ship(tmp_path, "sg-b-D", "stargan", "discriminator", default=True)
    ship(tmp_path, "ret-x", "retentive", "generator-method", default=True, forgers=["attgan"])
    ship(tmp_path, "ret-y", "retentive", "generator-method", forgers=["stargan"])
    ship(tmp_path, "clf", "classifier", "classifier")
    return Manifest(tmp_path)


def test_by_manifest_entry_name(shipped: Manifest) -> None:
    path, entry = resolve_weights("sg-a", "stargan", "generator", manifest=shipped)
    assert path == shipped.directory / "sg-a.safetensors" and entry is not None and entry.name == "sg-a"


def test_by_file_path_finds_its_entry(shipped: Manifest, tmp_path: Path) -> None:
    path, entry = resolve_weights(tmp_path / "sg-a.safetensors", "stargan", "generator", manifest=shipped)
    assert path == tmp_path / "sg-a.safetensors" and entry is not None and entry.name == "sg-a"
    loose = tmp_path / "elsewhere" / "mine.safetensors"
    save_weights({"w": torch.zeros(1)}, loose, {})
    assert resolve_weights(str(loose), "stargan", "generator", manifest=shipped) == (loose, None)


def test_by_default_for_kind_and_role(shipped: Manifest) -> None:
    assert resolve_weights(None, "stargan", "generator", manifest=shipped)[1].name == "sg-b"  # the default entry
    assert resolve_weights(None, "stargan", "discriminator", manifest=shipped)[1].name == "sg-b-D"
    # `prefer` ranks before the default flag (generator methods: trained against the same forgers).
    stargan = resolve_weights(None, "retentive", "generator-method", manifest=shipped,
                              prefer=lambda e: e.info.get("forgers") == ["stargan"])
    assert stargan[1].name == "ret-y"
    assert resolve_weights(None, "retentive", "generator-method", manifest=shipped)[1].name == "ret-x"
    # A named default (the classifier and its judge share kind and role).
    assert resolve_weights(None, "classifier", "classifier", default="clf", manifest=shipped)[1].name == "clf"


def test_error_messages(shipped: Manifest, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no shipped generator weights for 'attgan' in .*manifest.json; "
                                              r"train one"):
        resolve_weights(None, "attgan", "generator", manifest=shipped, hint="train one")
    with pytest.raises(CheckpointError, match=r"no shipped classifier weights 'judge' in .*manifest.json$"):
        resolve_weights(None, "classifier", "classifier", default="judge", manifest=shipped)
    with pytest.raises(CheckpointError, match="manifest entry 'sg-a' is a stargan generator, not retentive "
                                              "generator-method weights"):
        resolve_weights("sg-a", "retentive", "generator-method", manifest=shipped)
    with pytest.raises(CheckpointError, match=r"checkpoint not found: .*nope.safetensors \(neither a file nor a "
                                              r"manifest entry\)"):
        resolve_weights(tmp_path / "nope.safetensors", "stargan", "generator", manifest=shipped)
    (tmp_path / "sg-a.safetensors").write_bytes(b"replaced")
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        resolve_weights("sg-a", "stargan", "generator", manifest=shipped)
    (tmp_path / "sg-b.safetensors").unlink()
    with pytest.raises(CheckpointError, match="points to a missing file"):
        resolve_weights(None, "stargan", "generator", manifest=shipped)


def test_the_three_loaders_resolve_through_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forgers, generator methods and the classifier name weights the same way and fail the same way."""
    from core.classifier import load_classifier
    from core.forgers import create_forger
    from core.methods import create_method

    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    ship(tmp_path, "sg", "stargan", "generator", default=True)
    for load in (lambda: create_forger("fpgan"), lambda: load_classifier(),
                 lambda: create_method("retentive", create_forger("stargan", config="tiny", pretrained=False))):
        with pytest.raises(CheckpointError, match="no shipped"):
            load()
    for load in (lambda: create_forger("fpgan", "sg"), lambda: load_classifier("sg")):
        with pytest.raises(CheckpointError, match="manifest entry 'sg' is a stargan generator"):
            load()
    with pytest.raises(CheckpointError, match="not found"):
        load_classifier(tmp_path / "missing.safetensors")
