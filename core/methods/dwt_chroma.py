"""DWT-chroma: a generator of Haar-subband perturbations of the chroma channels (Cb, Cr); luma untouched."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from core.generators.nets import PerturbationUNet
from core.generators.saliency import SALIENCY_KINDS, saliency_mask
from core.methods.base import METHODS, Through
from core.methods.dwt_pgd import DWTPGD
from core.methods.one_pass import GeneratorMethod
from core.transforms import dwt, rgb_to_ycbcr

SUBBANDS = 4  # LL, LH, HL, HH


@METHODS.register("dwt-chroma")
class DWTChroma(GeneratorMethod, DWTPGD):
    """One pass of a U-Net that works in the wavelet domain: it reads the one-level Haar subbands of
    Y, Cb and Cr (12 channels at half resolution, plus a noise map) and writes a perturbation of the 8
    subbands of Cb and Cr, each coefficient bounded by ``eps * tanh`` and weighted by a saliency mask
    (``saliency``: ``spectral`` residual of the luma (Hou & Zhang 2007, no learned weights), ``center``
    prior, or ``none``; ``mask_floor`` is the weight of the least salient coefficient). Y is never
    changed: the result is composed, and held in gamut, by :meth:`DWTPGD.compose`/:meth:`DWTPGD.project`.

    Trained against frozen forgers for the non-targeted objective, summed over forgers and targets c:

        L = -(lambda_adv * mse(G(T(x_adv), c), G(T(x), c)) + lambda_feat * d_VGG16(G(T(x_adv), c), G(T(x), c)))

    with T an optional EoT transform (one draw applied to both x and x_adv) and d_VGG16 the feature
    distance of :class:`core.generators.features.FeatureDistance` (left out, with a warning, without
    the VGG16 weights).

    Budget: as ``dwt-pgd``, ``eps`` = L-inf bound on every Cb/Cr subband coefficient (YCbCr on [0, 1]),
    default 0.02. Inputs need even height and width.

    Shapes: x (N, 3, H, W) in [-1, 1] -> x_adv (N, 3, H, W) on the 8-bit grid.

    Example:
        >>> from core.forgers import create_forger
        >>> forger = create_forger("stargan", config="tiny", pretrained=False)
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> DWTChroma(forger, pretrained=False, config="tiny")(x).shape
        torch.Size([1, 3, 32, 32])
    """

    name = "dwt-chroma"
    paper = "Haar DWT chroma perturbation generator, saliency-weighted (one-pass counterpart of dwt-pgd)"
    budget_units = "L-inf on Haar DWT subbands of Cb/Cr (YCbCr on [0, 1])"
    defaults = {"eps": 0.02, "steps": 1, "objective": "distort", "random_start": True}
    eps_range = (0.0, 0.5)
    option_defaults = {"lambda_adv": 1.0, "lambda_feat": 0.1, "saliency": "spectral", "mask_floor": 0.5}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.objective != "distort":
            raise ValueError("dwt-chroma is trained for the distort objective only")
        if self.options["saliency"] not in SALIENCY_KINDS:
            raise ValueError(f"unknown saliency {self.options['saliency']!r}; known: {', '.join(SALIENCY_KINDS)}")

    def build_net(self, config: dict[str, Any]) -> nn.Module:
        in_ch = 3 * SUBBANDS + int(config["noise_channels"])
        return PerturbationUNet(in_ch, 2 * SUBBANDS, int(config["width"]), int(config["depth"]))

    def noise_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[0], int(self.config["noise_channels"]), x.shape[2] // 2, x.shape[3] // 2)

    def mask(self, low_y: torch.Tensor) -> torch.Tensor:
        """Saliency weights (N, 1, H/2, W/2) in [mask_floor, 1] from the luma LL band."""
        with torch.no_grad():
            return saliency_mask(low_y / 2, str(self.options["saliency"]), float(self.options["mask_floor"]))

    def subbands(
        self, x: torch.Tensor, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ycc, chroma LL, chroma details, d_LL, d_details) of the generator's perturbation."""
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"dwt-chroma needs even height and width, got {tuple(x.shape[-2:])}")
        ycc = rgb_to_ycbcr((x + 1) / 2)
        low, highs = dwt(ycc)
        high = highs[0]
        n, _, h, w = low.shape
        logits = self.net(torch.cat([low - 1, high.flatten(1, 2), z], dim=1))
        m = self.mask(low[:, :1])
        d = self.eps * torch.tanh(logits)
        d_low = d[:, :2] * m
        d_high = d[:, 2:].reshape(n, 2, 3, h, w) * m[:, :, None]
        return ycc, low[:, 1:], high[:, 1:], d_low, d_high

    def generate(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ycc, low, high, d_low, d_high = self.subbands(x, z)
        return self.compose(ycc, low + d_low, high + d_high)

    def perturb(self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Through
                ) -> torch.Tensor:
        if self.steps == 0:
            return super().perturb(x, targets, gen, through)
        with torch.no_grad():
            self.net.to(x.device)
            ycc, low, high, d_low, d_high = self.subbands(x, self.noise(x, gen))
            return self.project(ycc, low, high, d_low, d_high)

    def noise_baseline(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        ycc = rgb_to_ycbcr((x + 1) / 2)
        low, highs = dwt(ycc[:, 1:])
        d_low = self.uniform(low.shape, self.eps, gen, low)
        d_high = self.uniform(highs[0].shape, self.eps, gen, low)
        return self.project(ycc, low, highs[0], d_low, d_high)

    def training_loss(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        opts = self.options
        x_adv = self.generate(x, self.noise(x, gen))
        seen, seen_clean = self.seen(x_adv, gen, x)
        assert seen_clean is not None
        with torch.no_grad():
            refs = self.forger_outputs(seen_clean, targets)
        features = self.features(x.device)
        n = x.shape[0]
        l_mse, l_feat = x.new_zeros(()), x.new_zeros(())
        for out, ref in zip(self.forger_outputs(seen, targets), refs, strict=True):
            l_mse = l_mse + (out - ref).pow(2).flatten(1).mean(1).sum() / n
            if features is not None:
                l_feat = l_feat + features(out, ref).sum() / n
        loss = -(float(opts["lambda_adv"]) * l_mse + float(opts["lambda_feat"]) * l_feat)
        return loss, {"loss": loss.item(), "l_mse": l_mse.item(), "l_feat": l_feat.item()}
