"""The attribute edits a protection covers (class-transferable targets, Ruiz et al. 2020).

The default set is every single-attribute edit of a face: each hair colour set alone (the other hair
colours cleared), and every other (binary) attribute flipped - for the CelebA-5 attributes that is five
targets: black, blond, brown hair, gender flipped, age flipped. The edits start from the face's own
attributes when known, else from a classifier's prediction (a forger's discriminator head or Veil's
attribute classifier), else from a fixed neutral face (all attributes 0).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

HAIR_ATTRIBUTES = frozenset({"Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair"})


def single_attribute_edits(c_org: torch.Tensor, attributes: Sequence[str]) -> torch.Tensor:
    """(A,) 0/1 attributes of one face -> (T, A) target vectors, one per single-attribute edit."""
    if c_org.dim() != 1 or c_org.shape[0] != len(attributes):
        raise ValueError(f"expected ({len(attributes)},) attributes, got {tuple(c_org.shape)}")
    hair = [i for i, a in enumerate(attributes) if a in HAIR_ATTRIBUTES]
    rows = []
    for i in range(len(attributes)):
        c = c_org.clone().float()
        if i in hair:
            c[hair] = 0.0
            c[i] = 1.0
        else:
            c[i] = 1.0 - c[i]
        rows.append(c)
    return torch.stack(rows)


def fixed_targets(attributes: Sequence[str]) -> torch.Tensor:
    """The edits of a neutral face (all attributes 0): used when nothing is known about the face."""
    return single_attribute_edits(torch.zeros(len(attributes)), attributes)


def targets_for(
    x: torch.Tensor,
    attributes: Sequence[str],
    c_org: torch.Tensor | None = None,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Targets for a batch: (N, 3, H, W) -> (N, T, A).

    ``c_org`` (N, A) when the faces' attributes are known; otherwise ``classifier(x)`` giving logits
    (N, A); otherwise the fixed set for every face.
    """
    n = x.shape[0]
    if c_org is None and classifier is not None:
        with torch.no_grad():
            c_org = (classifier(x) > 0).float()
    if c_org is None:
        return fixed_targets(attributes).to(x.device).expand(n, -1, -1).clone()
    if c_org.shape != (n, len(attributes)):
        raise ValueError(f"expected c_org of shape ({n}, {len(attributes)}), got {tuple(c_org.shape)}")
    return torch.stack([single_attribute_edits(c, attributes) for c in c_org.float()]).to(x.device)


def select_edits(targets: torch.Tensor, attributes: Sequence[str], only: Sequence[str] | None) -> torch.Tensor:
    """Keep the single-attribute edits of the attributes named in ``only`` (all when None).

    ``targets`` (N, T, A) are single-attribute edits, row i editing attribute i.
    """
    if only is None:
        return targets
    unknown = [a for a in only if a not in attributes]
    if unknown or not only:
        raise ValueError(f"unknown target attributes {unknown or list(only)}; the forgers know {list(attributes)}")
    return targets[:, [list(attributes).index(a) for a in only]]
