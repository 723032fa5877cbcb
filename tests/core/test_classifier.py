from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.checkpoints import CheckpointError
from core.classifier import AttributeClassifier, accuracy, export_classifier, load_classifier, train_classifier


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 faces whose attribute k is 'channel k%3 is bright in quadrant k' (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(n, 5, generator=g) < 0.5).float()
    x = torch.full((n, 3, 16, 16), 60, dtype=torch.uint8)
    for k in range(5):
        r, col = (k // 3) * 8, (k % 3) * 5
        x[c[:, k].bool(), k % 3, r : r + 8, col : col + 5] = 220
    return x, c


@pytest.mark.slow  # more than 5 s: not in `make test-fast`
def test_learns_separable_attributes_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    tx, tc = separable(256, 0)
    vx, vc = separable(64, 1)
    untrained = accuracy(AttributeClassifier(16, 8), vx.float() / 127.5 - 1, vc).mean()
    model, facts = train_classifier(tx, tc, vx, vc, epochs=6, batch=32, lr=5e-3, width=8, image_size=16,
                                    log=lambda _: None)
    assert min(facts["val_accuracy"].values()) > 0.9 > untrained
    export_classifier(model, facts, "test")
    card = (tmp_path / "attribute-classifier.md").read_text()
    assert "16 px input" in card and f"| Male | {facts['val_accuracy']['Male']:.4f} |" in card
    loaded = load_classifier()
    x = vx.float() / 127.5 - 1
    model.eval()
    assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_missing_classifier_is_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VEIL_CHECKPOINTS", str(tmp_path))
    with pytest.raises(CheckpointError, match="train one"):
        load_classifier()
