"""Stress test: a forger fine-tuned on protected faces, as an attacker who knows the protection would.

Ruiz et al. (Disrupting Deepfakes, 2020) show that adversarial training of the editor weakens disruptions.
This is its cheapest form: the attacker protects faces with the very method (and budget) Veil uses,
against the public forger, and fine-tunes a copy of the forger so that its edit of a protected face
matches the original forger's edit of the clean face (L1), while still editing clean faces as before.
The protector keeps making its perturbations against the original forger; the result says how far each
method's defense success rate falls on the adapted forger, for faces neither saw in training.

Example::

    adapted, losses = finetune_on_protected(forger, clean, protected, targets, steps=200)
    before, after = success_rate(forger, val, val_adv, t), success_rate(adapted, val, val_adv, t)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from core.forgers import Forger
from core.methods import expand_targets
from core.metrics import defended


def finetune_on_protected(
    forger: Forger,
    clean: torch.Tensor,
    protected: torch.Tensor,
    targets: torch.Tensor,
    steps: int = 200,
    lr: float = 1e-4,
    batch_size: int = 16,
    seed: int = 0,
) -> tuple[Forger, list[float]]:
    """A copy of ``forger`` fine-tuned to edit ``protected`` faces as the original edits ``clean`` ones.

    Args:
        forger: the public forger (left unchanged).
        clean, protected: ``(N, 3, S, S)`` faces and their protected versions.
        targets: ``(N, T, A)`` the edits to adapt for (every pair (face, edit) is a training sample).
        steps, lr, batch_size, seed: Adam fine-tuning of the generator, pairs drawn with ``seed``.

    Returns:
        The adapted forger (in eval use, frozen) and the loss per step.
    """
    if clean.shape != protected.shape or clean.shape[0] != targets.shape[0]:
        raise ValueError(f"clean {tuple(clean.shape)}, protected {tuple(protected.shape)} and targets "
                         f"{tuple(targets.shape)} must hold the same faces")
    xs, cs = expand_targets(clean, targets)
    advs, _ = expand_targets(protected, targets)
    with torch.no_grad():
        refs = forger(xs, cs)  # what the attacker wants back: the original edit of the clean face
    adapted = copy.deepcopy(forger)
    for p in adapted.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(adapted.parameters(), lr=lr, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(xs.shape[0], (min(batch_size, xs.shape[0]),), generator=gen)
        # Half the loss keeps the clean behaviour: an editor that only undid perturbations would be no editor.
        loss = F.l1_loss(adapted(advs[idx], cs[idx]), refs[idx]) + F.l1_loss(adapted(xs[idx], cs[idx]), refs[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    for p in adapted.parameters():
        p.requires_grad_(False)
    return adapted, losses


@torch.no_grad()
def success_rate(forger: Forger, clean: torch.Tensor, protected: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of (face, edit) pairs whose edit of the protected face differs from the clean edit by MSE > 0.05."""
    xs, cs = expand_targets(clean, targets)
    advs, _ = expand_targets(protected, targets)
    return float(defended(forger(advs, cs), forger(xs, cs)).float().mean())
