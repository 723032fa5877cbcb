"""I-FGSM / PGD against face editors (Ruiz et al., "Disrupting Deepfakes", arXiv 2003.01279)."""

from __future__ import annotations

import torch

from core.methods.base import METHODS, Protection, Through


@METHODS.register("pgd")
class PGD(Protection):
    """Projected gradient ascent in an RGB L-infinity ball, class-transferable over all targets.

    Budget: ``eps`` = L-inf radius on [-1, 1] (default 0.05 = 6.4/255 on [0, 1]); ``step_size`` per
    iteration (default eps / 5: 0.01 at the default eps, as in the reference code); ``steps`` (default 10);
    random start in the ball.
    Objective ``distort`` maximises sum_{forger, c} MSE(G(x_adv, c), G(x, c)); ``nullify`` minimises
    sum MSE(G(x_adv, c), x).

    Shapes: x (N, 3, H, W) in [-1, 1] -> x_adv (N, 3, H, W) on the 8-bit grid, |x_adv - x| <= eps.

    Example:
        >>> from core.forgers import create_forger
        >>> forger = create_forger("stargan", config="tiny", pretrained=False)
        >>> x = torch.rand(2, 3, 32, 32) * 2 - 1
        >>> x_adv = PGD(forger, eps=0.05, steps=3)(x)
        >>> bool((x_adv - x).abs().max() <= 0.05 + 2 / 255)
        True
    """

    name = "pgd"
    paper = "Ruiz et al., Disrupting Deepfakes, ECCV-W 2020 (arXiv 2003.01279)"
    defaults = {"eps": 0.05, "steps": 10, "step_fraction": 0.2, "objective": "distort", "random_start": True}

    def perturb(self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Through
                ) -> torch.Tensor:
        def render(deltas: list[torch.Tensor]) -> torch.Tensor:
            return (x + deltas[0]).clamp(-1, 1)

        (delta,) = self.ascend([self.start(x.shape, gen, x)], render, x, targets, gen, through)
        return render([delta])
