"""Anti-Forgery: perceptual-aware perturbations in the a/b channels of CIELab (Wang et al., "Anti-Forgery:
Towards a Stealthy and Robust DeepFake Disruption Attack via Adversarial Perceptual-aware Perturbations",
IJCAI 2022, arXiv 2206.00477)."""

from __future__ import annotations

import torch

from core.methods.base import METHODS, Protection, Through
from core.transforms import lab_to_rgb, rgb_to_lab

# Rounding an RGB pixel to the nearest 8-bit level moves its a/b by at most about one Lab unit.
LAB_QUANT_TOL = 1.5


@METHODS.register("anti-forgery")
class AntiForgery(Protection):
    """Sign-gradient steps on the a and b channels of CIELab only; L (lightness) is never changed.

    Budget: ``eps`` = L-inf bound on the a/b perturbation in Lab units (default 4.0; a/b span about
    [-128, 127]); ``step_size`` default eps / 5; ``steps`` default 10. The public code's Adam steps of
    1e-4 barely move the image; sign steps use the whole budget. Colour changes are far less visible to
    people than lightness changes of the same size, which is the point of the method. Pass ``eot`` (e.g.
    ``EoT.from_names(["identity", "jpeg", "blur", "resize"])``) for robustness to those transformations.

    Shapes: x (N, 3, H, W) in [-1, 1] -> x_adv (N, 3, H, W) on the 8-bit grid.

    Example:
        >>> from core.forgers import create_forger
        >>> forger = create_forger("stargan", config="tiny", pretrained=False)
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> x_adv = AntiForgery(forger, eps=6.0, steps=3)(x)
        >>> x_adv.shape
        torch.Size([1, 3, 32, 32])
    """

    name = "anti-forgery"
    paper = "Wang et al., Anti-Forgery, IJCAI 2022 (arXiv 2206.00477)"
    budget_units = "L-inf on CIELab a/b (Lab units)"
    defaults = {"eps": 4.0, "steps": 10, "step_fraction": 0.2, "objective": "distort", "random_start": True}
    eps_range = (0.0, 40.0)

    def perturb(self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Through
                ) -> torch.Tensor:
        lab = rgb_to_lab((x + 1) / 2)

        def render(deltas: list[torch.Tensor]) -> torch.Tensor:  # deltas[0]: (N, 2, H, W) on a and b
            return self.to_rgb(torch.cat([lab[:, :1], lab[:, 1:] + deltas[0]], dim=1))

        (delta,) = self.ascend([self.start(lab[:, 1:].shape, gen, lab)], render, x, targets, gen, through)
        return render([delta])

    @staticmethod
    def to_rgb(lab: torch.Tensor) -> torch.Tensor:
        return (lab_to_rgb(lab).clamp(0, 1) * 2 - 1).clamp(-1, 1)

    def linf_cap(self) -> float:
        # The budget lives in Lab; the RGB cap only stops rounding from adding more than it must.
        return 2.0

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor) -> bool:
        d = rgb_to_lab((x_adv.double() + 1) / 2) - rgb_to_lab((x.double() + 1) / 2)
        ab_ok = d[:, 1:].abs().amax() <= self.eps + LAB_QUANT_TOL
        l_ok = d[:, :1].abs().amax() <= LAB_QUANT_TOL
        return bool((ab_ok & l_ok).item())
