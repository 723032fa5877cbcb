"""The shipped weights match their cards: numbers recomputed on the validation split (needs CelebA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoints import Manifest
from core.classifier import CLASSIFIER_NAME, accuracy, load_classifier
from core.data import FacePack, build_pack


def test_manifest_files_exist_and_match_sha256() -> None:
    manifest = Manifest()
    for entry in manifest.entries:
        path = manifest.directory / entry.file
        if path.suffix == ".safetensors":  # reference pickles a user drops in are theirs to keep
            assert manifest.resolve(entry, verify=True).is_file(), entry.name


@pytest.mark.dataset
def test_classifier_card_accuracy(celeba_root: Path, tmp_path: Path) -> None:
    entry = Manifest().find(CLASSIFIER_NAME)
    if entry is None:
        pytest.skip("no classifier shipped")
    pack = FacePack(build_pack(celeba_root, "val", 64, tmp_path / "val.npz"))
    acc = accuracy(load_classifier(), pack.images.float() / 127.5 - 1, pack.attrs)
    card = entry.info["metrics"]
    for name, value in zip(load_classifier().attributes, acc.tolist(), strict=True):
        assert value == pytest.approx(card[name], abs=0.002), name
    assert torch.isfinite(acc).all()
