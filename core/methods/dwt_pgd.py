"""DWT-PGD: iterative perturbation of the Haar wavelet subbands of the chroma (Cb, Cr) channels only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from core.methods.base import METHODS, Protection
from core.transforms import dwt, idwt, rgb_to_ycbcr, ycbcr_to_rgb

# Rounding to 8-bit RGB moves Y by at most half a level of each channel, about 0.5/255 on [0, 1].
Y_QUANT_TOL = 1.0 / 255


@METHODS.register("dwt-pgd")
class DWTPGD(Protection):
    """Sign-gradient ascent on the one-level Haar DWT subbands (LL, LH, HL, HH) of Cb and Cr; Y untouched.

    The iterative counterpart of the DWT-domain chroma generator: people are least sensitive to
    chroma, and the subbands let the perturbation carry both smooth (LL) and edge (LH/HL/HH) energy.
    Non-targeted objective: maximise sum_{forger, c} MSE(G(x_adv, c), G(x, c)).

    Budget: ``eps`` = L-inf bound on every subband coefficient of Cb and Cr (YCbCr on [0, 1]; the
    orthonormal Haar basis spreads a coefficient over a 2x2 block at half its size); default 0.02.
    ``step_size`` default eps / 5, ``steps`` default 10. Inputs need even height and width.

    Shapes: x (N, 3, H, W) in [-1, 1] -> x_adv (N, 3, H, W) on the 8-bit grid.

    Example:
        >>> from core.forgers import create_forger
        >>> forger = create_forger("stargan", config="tiny", pretrained=False)
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> DWTPGD(forger, steps=2)(x).shape
        torch.Size([1, 3, 32, 32])
    """

    name = "dwt-pgd"
    paper = "Haar DWT chroma perturbation (iterative counterpart of the DWT-domain generator)"
    budget_units = "L-inf on Haar DWT subbands of Cb/Cr (YCbCr on [0, 1])"
    defaults = {"eps": 0.02, "steps": 10, "step_fraction": 0.2, "objective": "distort", "random_start": True}
    eps_range = (0.0, 0.5)

    def perturb(self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        ycc = rgb_to_ycbcr((x + 1) / 2)
        low, highs = dwt(ycc[:, 1:])

        def render(deltas: list[torch.Tensor]) -> torch.Tensor:
            return self.compose(ycc, low + deltas[0], highs[0] + deltas[1])

        start = [self.start(low.shape, gen, low), self.start(highs[0].shape, gen, low)]
        d_low, d_high = self.ascend(start, render, x, targets, gen)
        return self.project(ycc, low, highs[0], d_low, d_high)

    def project(
        self, ycc: torch.Tensor, low: torch.Tensor, high: torch.Tensor, d_low: torch.Tensor, d_high: torch.Tensor,
        rounds: int = 6,
    ) -> torch.Tensor:
        """The final image: alternate the gamut shrink of :meth:`compose` and the subband box, so that both
        Y-untouched and the subband budget hold (the shrink alone can push a coefficient past eps)."""
        x_adv = self.compose(ycc, low + d_low, high + d_high)
        for _ in range(rounds):
            chroma = rgb_to_ycbcr((x_adv + 1) / 2)[:, 1:]
            got_low, got_highs = dwt(chroma)
            if max((got_low - low).abs().max().item(), (got_highs[0] - high).abs().max().item()) <= self.eps:
                break
            d_low = (got_low - low).clamp(-self.eps, self.eps)
            d_high = (got_highs[0] - high).clamp(-self.eps, self.eps)
            x_adv = self.compose(ycc, low + d_low, high + d_high)
        return x_adv

    @staticmethod
    def compose(ycc: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1] from the original Y and perturbed chroma subbands, kept in gamut without touching Y.

        Clamping RGB would change luma where a colour leaves the gamut; instead the chroma change of such a
        pixel is shrunk (towards the original colour, whose luma is the same) just enough to stay in [0, 1].
        """
        rgb0 = ycbcr_to_rgb(ycc)
        d = ycbcr_to_rgb(torch.cat([ycc[:, :1], idwt(low, [high])], dim=1)) - rgb0
        room = torch.where(d > 0, (1 - rgb0) / d.clamp(min=1e-12), torch.where(d < 0, -rgb0 / d.clamp(max=-1e-12),
                                                                                torch.ones_like(d)))
        t = room.clamp(0, 1).amin(dim=1, keepdim=True)
        return ((rgb0 + t * d).clamp(0, 1) * 2 - 1).clamp(-1, 1)

    def linf_cap(self) -> float:
        # The budget lives in the chroma subbands; no extra RGB cap.
        return 2.0

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor) -> bool:
        """At the resolution the perturbation was computed at (the Haar budget depends on it)."""
        pad = (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)
        x, x_adv = F.pad(x, pad, mode="replicate"), F.pad(x_adv, pad, mode="replicate")
        a, b = rgb_to_ycbcr((x.double() + 1) / 2), rgb_to_ycbcr((x_adv.double() + 1) / 2)
        y_ok = (a[:, :1] - b[:, :1]).abs().amax() <= Y_QUANT_TOL
        (la, ha), (lb, hb) = dwt(a[:, 1:]), dwt(b[:, 1:])
        # 8-bit rounding adds up to about one level per pixel; a Haar coefficient sums 4 pixels / 2.
        tol = 2.0 / 255
        sub_ok = max((la - lb).abs().amax().item(), (ha[0] - hb[0]).abs().amax().item()) <= self.eps + tol
        return bool(y_ok.item()) and sub_ok
