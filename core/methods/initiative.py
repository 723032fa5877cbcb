"""Initiative: a perturbation generator trained against a surrogate that imitates a black-box forger (Huang
et al., "Initiative Defense against Facial Manipulation", AAAI 2022, arXiv 2112.10098)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.forgers import Forger, create_forger
from core.methods.base import METHODS, expand_targets
from core.methods.one_pass import RGBGeneratorMethod


@METHODS.register("initiative")
class Initiative(RGBGeneratorMethod):
    """One pass of a U-Net P (``x_adv = clamp(x + eps * tanh(P(x, z)), -1, 1)``, as ``retentive``), trained
    without ever looking inside the forger it protects against.

    The target forgers are black boxes: training only *queries* them, without gradients, for their
    edits of clean and of protected faces. A surrogate forger S (an architecture of the defender's choice,
    by default StarGAN's compact network, randomly initialised; never the target's weights) learns to
    imitate those answers, and the generator learns
    to break the surrogate. The two alternate at every iteration, after a warm-up in which S imitates
    alone:

        imitation  (S):  L_S = sum_c |S(x, c) - G(x, c)|_1 + |S(x_adv, c) - G(x_adv, c)|_1   (G queried)
        infection  (P):  L_P = lambda_mag * mse(x_adv, x) + lambda_feat * d_VGG16(x_adv, x)
                               - lambda_adv * sum_c mse(S(T(x_adv), c), S(T(x), c))

    Imitating the target on protected faces too keeps S faithful exactly where P pushes it, so what breaks
    S also breaks G. The method is then measured against the real target (``veil eval``), which it never
    saw inside. T is an optional EoT transform.

    Options: ``surrogate`` (forger architecture of S, default ``stargan``), ``surrogate_config``
    (``compact64``), ``surrogate_lr`` (Adam, 2e-4), ``warmup`` (imitation-only iterations, 500), and the
    loss weights ``lambda_mag``, ``lambda_feat``, ``lambda_adv``.

    Budget: ``eps`` = L-inf radius on [-1, 1] (default 0.05 = 6.4/255).

    Shapes: x (N, 3, H, W) in [-1, 1] -> x_adv (N, 3, H, W) on the 8-bit grid, |x_adv - x| <= eps.

    Example:
        >>> from core.forgers import create_forger
        >>> forger = create_forger("stargan", config="tiny", pretrained=False)
        >>> method = Initiative(forger, pretrained=False, config="tiny", surrogate_config="tiny")
        >>> x = torch.rand(1, 3, 32, 32) * 2 - 1
        >>> bool(((method(x) - x).abs().max() <= 0.05 + 1e-6).item())
        True
    """

    name = "initiative"
    paper = "Huang et al., Initiative Defense against Facial Manipulation, AAAI 2022 (arXiv 2112.10098)"
    defaults = {"eps": 0.05, "steps": 1, "objective": "distort", "random_start": True}
    option_defaults = {
        "lambda_mag": 10.0, "lambda_feat": 1.0, "lambda_adv": 1.0,
        "surrogate": "stargan", "surrogate_config": "compact64", "surrogate_lr": 2e-4, "warmup": 500,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.objective != "distort":
            raise ValueError("initiative is trained for the distort objective only")
        self._surrogate: Forger | None = None

    # ----- the surrogate (training only: inference is the generator's one pass) ------------------------
    def auxiliary(self) -> Forger:
        if self._surrogate is None:
            with torch.random.fork_rng(devices=[]):  # its random init follows `seed`, not the global RNG
                torch.manual_seed(self.seed + 7919)
                self._surrogate = create_forger(str(self.options["surrogate"]), pretrained=False, frozen=False,
                                                config=str(self.options["surrogate_config"]))
            self._surrogate.to(next(self.net.parameters()).device)
        return self._surrogate

    @torch.no_grad()
    def query(self, x: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """The black boxes' answers G(x, c) for every target (N*T, 3, H, W): no gradient ever flows back."""
        xs, cs = expand_targets(x.detach(), targets)
        return [f(xs, cs) for f in self.forgers]

    def auxiliary_loss(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Imitation: the surrogate's L1 distance to the targets' answers on clean and protected faces."""
        surrogate = self.auxiliary().requires_grad_(True).train()
        with torch.no_grad():
            x_adv = self.generate(x, self.noise(x, gen))
        both = torch.cat([x, x_adv])
        answers = self.query(both, torch.cat([targets, targets]))
        xs, cs = expand_targets(both, torch.cat([targets, targets]))
        out = surrogate(xs, cs)
        loss = sum((F.l1_loss(out, a) for a in answers), out.new_zeros(())) / len(answers)
        with torch.no_grad():
            half = out.shape[0] // 2
            mse_adv = sum(F.mse_loss(out[half:], a[half:]) for a in answers) / len(answers)
        return loss, {"l_imit": loss.item(), "imit_mse_adv": float(mse_adv)}

    def generator_active(self, iteration: int) -> bool:
        return iteration >= int(self.options["warmup"])

    def training_loss(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Infection: break the surrogate's edits within the budget (the targets are never called here)."""
        surrogate = self.auxiliary().requires_grad_(False).eval()
        x_adv = self.generate(x, self.noise(x, gen))
        l_mag, mag_logs = self.magnitude_loss(x_adv, x)
        seen, seen_clean = self.seen(x_adv, gen, x)
        assert seen_clean is not None
        xs, cs = expand_targets(seen, targets)
        with torch.no_grad():
            ref = surrogate(expand_targets(seen_clean, targets)[0], cs)
        l_adv = (surrogate(xs, cs) - ref).pow(2).flatten(1).mean(1).sum() / x.shape[0]
        loss = l_mag - float(self.options["lambda_adv"]) * l_adv
        return loss, {"loss": loss.item(), **mag_logs, "l_adv": l_adv.item()}

    def validation_extras(self, x: torch.Tensor, x_adv: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        return self.imitation_error(x, x_adv, targets)

    @torch.no_grad()
    def imitation_error(self, x: torch.Tensor, x_adv: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """How far the surrogate is from the targets: MSE(S, G) on clean and on protected faces (validation)."""
        surrogate = self.auxiliary().eval()
        out: dict[str, float] = {}
        for key, images in (("surrogate_mse_clean", x), ("surrogate_mse_protected", x_adv)):
            xs, cs = expand_targets(images, targets)
            answers = self.query(images, targets)
            out[key] = float(sum(F.mse_loss(surrogate(xs, cs), a) for a in answers) / len(answers))
        return out
