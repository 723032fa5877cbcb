"""Pictures that show what a protection does: the amplified perturbation, and the forger's edits.

- :func:`perturbation_preview`: ``x_adv - x`` amplified (mid-grey is "unchanged"), the size of the photo.
- :func:`edits_preview`: one grid, two rows: the original face crop then a forger's edit of it per target,
  and the protected face crop then the same forger's edits of it -- what an attacker gets from each.

Example::

    result = protect_image(protection, image)
    grid, columns = edits_preview(protection.forgers[0], result, size=work_size(protection))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from core.image import make_grid, quantize
from core.methods import expand_targets
from core.receipt import attacker_crops

if TYPE_CHECKING:
    from core.forgers import Forger
    from core.protect import Protected

AMPLIFICATION = 10.0


def perturbation_preview(x: torch.Tensor, x_adv: torch.Tensor, amplification: float = AMPLIFICATION) -> torch.Tensor:
    """``(N, 3, H, W)`` pair -> ``amplification * (x_adv - x)`` in [-1, 1] on the 8-bit grid (0 is grey)."""
    if x.shape != x_adv.shape:
        raise ValueError(f"shapes differ: {tuple(x.shape)} vs {tuple(x_adv.shape)}")
    return quantize(((x_adv - x) * amplification).clamp(-1, 1))


@torch.no_grad()
def edits_preview(forger: Forger, result: Protected, size: int, face: int = 0) -> tuple[torch.Tensor, list[str]]:
    """The forger's edits of face ``face`` of a protected photo, before and after protection.

    Returns ``(grid, columns)``: grid ``(1, 3, H', W')`` with rows [original crop, its edits] and
    [protected crop, its edits]; ``columns`` names them (``"input"`` then the edited attributes).
    Raises ValueError when the result holds no measured faces or edits (a photo left unprotected).
    """
    if result.targets is None or result.edits is None:
        raise ValueError("nothing was protected in this photo: no edits to preview")
    frames = result.frames[face : face + 1] if result.frames else None
    if result.frames and not frames:
        raise ValueError(f"no face {face}: the photo has {len(result.frames)}")
    device = next(forger.parameters()).device
    clean = attacker_crops(result.image.tensor.to(device), frames, size)
    seen = attacker_crops(result.x_adv.to(device), frames, size)
    targets = result.targets[face : face + 1].to(device)
    rows = []
    for crop in (clean, seen):
        xs, cs = expand_targets(crop, targets)
        rows.append([crop[0], *forger(xs, cs)])
    return make_grid(rows), ["input", *result.edits]
