"""DWT-PGD: iterative perturbation of the Haar wavelet subbands of the chroma (Cb, Cr) channels only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.methods.base import METHODS, Protection, Through
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

    ``luma_eps`` (default 0: luma untouched) allows the Y subbands a budget of their own, in the same
    units. JPEG quantises chroma far more coarsely than luma, and no chroma-only perturbation of this
    budget survived it in our measurements (0 % success after JPEG q75 or q90, with or without EoT
    through JPEG, while 4:2:0 subsampling alone kept 72 %): a small luma budget is what JPEG-robust
    protection takes. With it, colours leaving the gamut are clipped in RGB.

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

    def __init__(self, *args: Any, luma_eps: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.luma_eps = float(luma_eps)
        if not 0.0 <= self.luma_eps <= self.eps_range[1]:
            raise ValueError(f"luma_eps {self.luma_eps} out of range [0, {self.eps_range[1]}] ({self.budget_units})")

    def perturb(self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Through
                ) -> torch.Tensor:
        ycc = rgb_to_ycbcr((x + 1) / 2)
        low, highs = dwt(ycc[:, 1:])
        start = [self.start(low.shape, gen, low), self.start(highs[0].shape, gen, low)]
        if self.luma_eps > 0:
            return self.perturb_with_luma(ycc, low, highs[0], start, x, targets, gen, through)

        def render(deltas: list[torch.Tensor]) -> torch.Tensor:
            return self.compose(ycc, low + deltas[0], highs[0] + deltas[1])

        d_low, d_high = self.ascend(start, render, x, targets, gen, through)
        return self.project(ycc, low, highs[0], d_low, d_high)

    def perturb_with_luma(
        self, ycc: torch.Tensor, low: torch.Tensor, high: torch.Tensor, start: list[torch.Tensor],
        x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Through,
    ) -> torch.Tensor:
        """Chroma and luma subbands together; the luma deltas live in [-eps, eps] scaled by luma_eps / eps,
        so one sign-ascent box serves both budgets."""
        y_low, y_highs = dwt(ycc[:, :1])
        scale = self.luma_eps / self.eps
        start += [self.start(y_low.shape, gen, low), self.start(y_highs[0].shape, gen, low)]

        def render(deltas: list[torch.Tensor]) -> torch.Tensor:
            y = idwt(y_low + scale * deltas[2], [y_highs[0] + scale * deltas[3]])
            chroma = idwt(low + deltas[0], [high + deltas[1]])
            return ycbcr_to_rgb(torch.cat([y, chroma], dim=1)).clamp(0, 1) * 2 - 1

        return render(self.ascend(start, render, x, targets, gen, through))

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
        # 8-bit rounding adds up to about one level per pixel; a Haar coefficient sums 4 pixels / 2.
        tol = 2.0 / 255
        if self.luma_eps > 0:
            y_ok = _subband_change(a[:, :1], b[:, :1]) <= self.luma_eps + tol
        else:
            y_ok = (a[:, :1] - b[:, :1]).abs().amax().item() <= Y_QUANT_TOL
        return y_ok and _subband_change(a[:, 1:], b[:, 1:]) <= self.eps + tol

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "luma_eps": self.luma_eps}


def _subband_change(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest change of any one-level Haar coefficient between channels ``a`` and ``b``."""
    (la, ha), (lb, hb) = dwt(a), dwt(b)
    return max((la - lb).abs().amax().item(), (ha[0] - hb[0]).abs().amax().item())
