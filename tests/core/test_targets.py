import pytest
import torch

from core.forgers import CELEBA5
from core.targets import fixed_targets, single_attribute_edits, targets_for


def test_single_attribute_edits_exact() -> None:
    # Black hair, male, young.
    c = torch.tensor([1.0, 0, 0, 1, 1])
    expected = torch.tensor([
        [1.0, 0, 0, 1, 1],  # black hair alone
        [0.0, 1, 0, 1, 1],  # blond alone
        [0.0, 0, 1, 1, 1],  # brown alone
        [1.0, 0, 0, 0, 1],  # gender flipped
        [1.0, 0, 0, 1, 0],  # age flipped
    ])
    assert torch.equal(single_attribute_edits(c, CELEBA5), expected)


def test_fixed_targets_from_neutral_face() -> None:
    t = fixed_targets(CELEBA5)
    assert t.shape == (5, 5)
    assert torch.equal(t[:3, :3], torch.eye(3))
    assert t[3, 3] == 1 and t[4, 4] == 1


def test_targets_for_batch_from_attributes_and_classifier() -> None:
    x = torch.zeros(2, 3, 8, 8)
    c = torch.tensor([[0.0, 1, 0, 0, 0], [0.0, 0, 1, 1, 1]])
    t = targets_for(x, CELEBA5, c)
    assert t.shape == (2, 5, 5)
    assert torch.equal(t[1, 3], torch.tensor([0.0, 0, 1, 0, 1]))
    from_logits = targets_for(x, CELEBA5, classifier=lambda _: c * 4 - 2)
    assert torch.equal(from_logits, t)
    assert torch.equal(targets_for(x, CELEBA5)[0], fixed_targets(CELEBA5))


def test_targets_reject_wrong_shapes() -> None:
    with pytest.raises(ValueError):
        single_attribute_edits(torch.zeros(4), CELEBA5)
    with pytest.raises(ValueError):
        targets_for(torch.zeros(2, 3, 8, 8), CELEBA5, torch.zeros(3, 5))


def test_select_edits_keeps_named_attributes_in_order() -> None:
    from core.targets import select_edits

    t = targets_for(torch.zeros(2, 3, 8, 8), CELEBA5)
    kept = select_edits(t, CELEBA5, ["Young", "Blond_Hair"])
    assert kept.shape == (2, 2, 5)
    assert torch.equal(kept[:, 0], t[:, 4]) and torch.equal(kept[:, 1], t[:, 1])
    assert select_edits(t, CELEBA5, None) is t
    with pytest.raises(ValueError, match="Bald"):
        select_edits(t, CELEBA5, ["Bald"])
    with pytest.raises(ValueError):
        select_edits(t, CELEBA5, [])
