"""Retentive: a U-Net perturbation generator trained end to end to nullify the forgers' edits (Jiang et al.,
"Towards Retentive Proactive Defense Against DeepFakes", TRIDENTCOM 2023)."""

from __future__ import annotations

import torch

from core.methods.base import METHODS
from core.methods.one_pass import RGBGeneratorMethod


@METHODS.register("retentive")
class Retentive(RGBGeneratorMethod):
    """One pass of a U-Net P: ``x_adv = clamp(x + eps * tanh(P(x, z)), -1, 1)``, an RGB L-inf ball.

    Trained against frozen forgers G for the nullifying objective (the edit of a protected face returns
    the face itself, so the photo *retains* its content), summed over every target edit c:

        L = lambda_mag * mse(x_adv, x) + lambda_feat * d_VGG16(x_adv, x)       (l_mag, imperceptibility;
                                                                               colour weighted by chroma_weight)
            + lambda_adv * sum_{G, c} mse(G(T(x_adv), c), T(x_adv))            (l_adv, nullification)

    with T an optional EoT transform and d_VGG16 the feature distance of
    :class:`core.generators.features.FeatureDistance` (left out, with a warning, without the VGG16
    weights). ``objective="distort"`` trains l_adv = -sum mse(G(T(x_adv), c), G(T(x), c)) instead.
    Squared errors are means over pixels (resolution-independent); ``||.||_2`` in the paper.

    Budget: ``eps`` = L-inf radius on [-1, 1] (default 0.05 = 6.4/255, as ``pgd``). Configs ``compact64``
    (64 px, width 16), ``celeba128`` (128 px, width 32), ``tiny`` (tests); any input size works.

    Shapes: x (N, 3, H, W) in [-1, 1] -> x_adv (N, 3, H, W) on the 8-bit grid, |x_adv - x| <= eps.

    Example:
        >>> from core.forgers import create_forger
        >>> forger = create_forger("stargan", config="tiny", pretrained=False)
        >>> method = Retentive(forger, pretrained=False, config="tiny")
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> bool(((method(x) - x).abs().max() <= 0.05 + 1e-6).item())
        True
    """

    name = "retentive"
    paper = "Jiang et al., Towards Retentive Proactive Defense Against DeepFakes, TRIDENTCOM 2023"
    defaults = {"eps": 0.05, "steps": 1, "objective": "nullify", "random_start": True}
    option_defaults = {"lambda_mag": 10.0, "lambda_feat": 1.0, "lambda_adv": 1.0, "chroma_weight": 1.0}

    def training_loss(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        x_adv = self.generate(x, self.noise(x, gen))
        l_mag, mag_logs = self.magnitude_loss(x_adv, x)
        n = x.shape[0]
        l_adv = x.new_zeros(())
        if self.objective == "nullify":
            seen, _ = self.seen(x_adv, gen)
            goal = seen.repeat_interleave(targets.shape[1], dim=0)
            for out in self.forger_outputs(seen, targets):
                l_adv = l_adv + (out - goal).pow(2).flatten(1).mean(1).sum() / n
        else:
            seen, seen_clean = self.seen(x_adv, gen, x)
            assert seen_clean is not None
            with torch.no_grad():
                refs = self.forger_outputs(seen_clean, targets)
            for out, ref in zip(self.forger_outputs(seen, targets), refs, strict=True):
                l_adv = l_adv - (out - ref).pow(2).flatten(1).mean(1).sum() / n
        loss = l_mag + float(self.options["lambda_adv"]) * l_adv
        return loss, {"loss": loss.item(), **mag_logs, "l_adv": l_adv.item()}
