"""core.stress: a forger fine-tuned on protected faces."""

from __future__ import annotations

import pytest
import torch

from core.forgers import create_forger
from core.methods import create_method
from core.stress import finetune_on_protected, success_rate
from core.targets import fixed_targets


def test_finetuning_adapts_a_copy_and_is_measured(faces: torch.Tensor) -> None:
    torch.manual_seed(0)
    forger = create_forger("stargan", config="tiny", pretrained=False)
    before = [p.clone() for p in forger.parameters()]
    targets = fixed_targets(forger.attributes)[None].expand(faces.shape[0], -1, -1)
    protected = create_method("pgd", forger, eps=0.05, steps=3, seed=0)(faces, targets=targets)
    adapted, losses = finetune_on_protected(forger, faces, protected, targets, steps=25, lr=1e-3, batch_size=4)
    assert all(torch.equal(a, b) for a, b in zip(before, forger.parameters(), strict=True))  # original untouched
    assert not all(p.requires_grad for p in adapted.parameters())
    assert len(losses) == 25 and sum(losses[-5:]) < sum(losses[:5])  # it learns to undo the perturbation
    rate = success_rate(forger, faces, protected, targets)
    # a share of (face, edit) pairs, and exactly what the pairs' distortions say
    pairs = faces.shape[0] * targets.shape[1]
    assert rate * pairs == pytest.approx(round(rate * pairs)) and success_rate(forger, faces, faces, targets) == 0.0
    with pytest.raises(ValueError, match="same faces"):
        finetune_on_protected(forger, faces, protected[:1], targets)
