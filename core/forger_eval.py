"""How well a forger edits: the numbers in its model card, recomputed from its weights.

On validation faces with known attributes, for every single-attribute edit c of each face:
- edit strength: MSE(G(x, c), x) on [-1, 1] (the reference StarGAN moves a face by about 0.0435);
- target-attribute accuracy: the share of edits whose edited attribute the attribute classifier reads as
  the target value (per target kind and overall);
- reconstruction error: MSE(G(G(x, c), c_org), x);
- identity error: MSE(G(x, c_org), x), what the forger changes when asked for no edit (its artefacts: an edit
  strength well above it is a real edit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from core.forgers import Forger
from core.metrics import mse
from core.targets import single_attribute_edits


@torch.no_grad()
def measure_forger(
    forger: Forger,
    faces: torch.Tensor,
    attrs: torch.Tensor,
    classifier: Callable[[torch.Tensor], torch.Tensor] | None,
    batch: int = 32,
    advance: Callable[[int], Any] = lambda n: None,
) -> dict[str, Any]:
    """Edit strength, target accuracy (needs ``classifier``) and reconstruction error over ``faces``."""
    names = forger.attributes
    strength = torch.zeros(len(names))
    recon = torch.zeros(len(names))
    hits = torch.zeros(len(names))
    identity = 0.0
    n = 0
    for start in range(0, len(faces), batch):
        x = faces[start : start + batch]
        c = attrs[start : start + batch].float()
        targets = torch.stack([single_attribute_edits(ci, names) for ci in c])  # (B, T, A)
        identity += float(mse(forger(x, c), x).sum())
        for t in range(targets.shape[1]):
            c_trg = targets[:, t]
            edited = forger(x, c_trg)
            strength[t] += mse(edited, x).sum()
            recon[t] += mse(forger(edited, c), x).sum()
            if classifier is not None:
                pred = classifier(edited)[:, t] > 0
                hits[t] += (pred == c_trg[:, t].bool()).float().sum()
        n += x.shape[0]
        advance(x.shape[0])
    out: dict[str, Any] = {
        "faces": n,
        "edit_strength": float(strength.sum() / (n * len(names))),
        "reconstruction_mse": float(recon.sum() / (n * len(names))),
        "identity_mse": identity / n,
        "edit_strength_per_target": {a: round(float(v / n), 5) for a, v in zip(names, strength, strict=True)},
    }
    if classifier is not None:
        out["target_accuracy"] = float(hits.sum() / (n * len(names)))
        out["target_accuracy_per_target"] = {a: round(float(v / n), 4) for a, v in zip(names, hits, strict=True)}
    return out
