"""The base class of every protection method: frozen forgers, targets, budget, seeding, EoT.

A protection maps clean faces ``x`` (N, 3, H, W) in [-1, 1] to protected faces ``x_adv`` of the same
shape, already rounded to the 8-bit grid a user receives, so that the forgers' edits of ``x_adv`` are
broken (``distort``: far from their edits of ``x``) or void (``nullify``: close to ``x`` itself).
Subclasses implement :meth:`Protection.perturb` (and :meth:`Protection.within_budget` when their budget
is not an RGB L-infinity ball).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from core.forgers import Forger
from core.image import quantize
from core.interrupt import checkpoint
from core.registry import Registry
from core.targets import targets_for

OBJECTIVES = ("distort", "nullify")
QUANT_STEP = 2.0 / 255.0  # one 8-bit level on [-1, 1]


@dataclass(frozen=True)
class Through:
    """What an iterative method optimises through: ``eot``, a random transform or an attacker's channel
    (:mod:`core.transforms`, :mod:`core.channel`; None: the forgers see x_adv itself), with ``samples``
    draws averaged per step and MI-FGSM ``momentum``. A method has its own (from its arguments); one call
    may be given another (the photo pipeline's round trip) without changing the method."""

    eot: Callable[..., torch.Tensor] | None = None
    samples: int = 1
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")


class Protection(ABC):
    """Common mechanics of the protection methods.

    Args:
        forgers: one forger or several (an ensemble: losses are summed over forgers and targets).
        eps: the budget, in the units the method documents (RGB L-inf on [-1, 1] for ``pgd``).
        steps: number of iterations (iterative methods).
        step_size: per-step update; None picks the method's default (``step_fraction`` * eps, else
            2.5 * eps / steps).
        objective: ``distort`` maximises MSE(G(x_adv, c), G(x, c)); ``nullify`` minimises MSE(G(x_adv, c), x).
        random_start: start from a random point of the budget (seeded).
        eot: optional transform (e.g. :class:`core.transforms.EoT`) applied to x_adv before the forgers,
            for robustness to JPEG, blur and resizing; ``eot_samples`` draws are averaged per step.
        seed: seed of every random choice, for deterministic results.
    """

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    budget_units: ClassVar[str] = "L-inf on [-1, 1]"
    defaults: ClassVar[dict[str, Any]] = {}
    eps_range: ClassVar[tuple[float, float]] = (0.0, 0.5)
    # One-pass methods (core.methods.one_pass) work at the forgers' size and ignore ``eot``; iterative
    # methods optimise through whatever they are given, at any resolution.
    one_pass: ClassVar[bool] = False

    def __init__(
        self,
        forgers: Forger | Sequence[Forger],
        eps: float | None = None,
        steps: int | None = None,
        step_size: float | None = None,
        objective: str | None = None,
        random_start: bool | None = None,
        eot: Callable[..., torch.Tensor] | None = None,
        eot_samples: int = 1,
        seed: int = 0,
    ) -> None:
        self.forgers: list[Forger] = [forgers] if isinstance(forgers, Forger) else list(forgers)
        if not self.forgers:
            raise ValueError("a protection needs at least one forger")
        attrs = {f.attributes for f in self.forgers}
        if len(attrs) != 1:
            raise ValueError(f"forgers disagree on their attributes: {attrs}")
        self.attributes: tuple[str, ...] = attrs.pop()
        for f in self.forgers:
            f.freeze()
        d = self.defaults
        self.eps = float(eps if eps is not None else d.get("eps", 0.05))
        lo, hi = self.eps_range
        if not lo < self.eps <= hi:
            raise ValueError(f"eps {self.eps} out of range ({lo}, {hi}] for {self.name} ({self.budget_units})")
        self.steps = int(steps if steps is not None else d.get("steps", 10))
        if not 0 <= self.steps <= 10_000:
            raise ValueError(f"steps must be in [0, 10000], got {self.steps}")
        fraction = d.get("step_fraction", 2.5 / max(self.steps, 1))
        self.step_size = float(step_size if step_size is not None else fraction * self.eps)
        self.objective = objective or d.get("objective", "distort")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        self.random_start = bool(random_start if random_start is not None else d.get("random_start", True))
        self.through = Through(eot, max(1, int(eot_samples)), float(d.get("momentum", 0.0)))
        self.seed = seed

    @property
    def eot(self) -> Callable[..., torch.Tensor] | None:
        return self.through.eot

    @property
    def eot_samples(self) -> int:
        return self.through.samples

    @property
    def momentum(self) -> float:
        return self.through.momentum

    # ----- public -------------------------------------------------------------------------------------
    def __call__(
        self, x: torch.Tensor, c_org: torch.Tensor | None = None, targets: torch.Tensor | None = None,
        *, through: Through | None = None,
    ) -> torch.Tensor:
        """Protect ``x`` (N, 3, H, W) in [-1, 1]; returns x_adv on the 8-bit grid, same shape.

        ``targets`` (N, T, A) are the attribute vectors to cover; by default every single-attribute
        edit of each face, from ``c_org`` (N, A) when its attributes are known. ``through``: what to
        optimise through for this call instead of the method's own (:class:`Through`).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if targets is None:
            targets = targets_for(x, self.attributes, c_org)
        x = x.detach()
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        with torch.enable_grad():
            x_adv = self.perturb(x, targets.to(x.device), gen, through or self.through)
        return self.finalize(x, x_adv)

    def finalize(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Round to 8 bits as delivered, then pull any pixel that rounding pushed past the budget back."""
        q = quantize(x_adv.detach())
        delta = q - x
        over = delta > self.linf_cap() + 1e-6
        under = delta < -self.linf_cap() - 1e-6
        q = torch.where(over, q - QUANT_STEP, torch.where(under, q + QUANT_STEP, q))
        return q.clamp(-1, 1)

    def linf_cap(self) -> float:
        """RGB L-inf bound enforced on the delivered image; methods with other budgets may widen it."""
        return self.eps

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor) -> bool:
        """Whether a delivered (8-bit) ``x_adv`` respects the budget relative to ``x``."""
        return bool(((x_adv - x).abs().amax() <= self.eps + 1e-6).item())

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.name,
            "eps": self.eps,
            "budget_units": self.budget_units,
            "steps": self.steps,
            "step_size": self.step_size,
            "objective": self.objective,
            "forgers": [f.name for f in self.forgers],
            "eot": self.eot is not None,
        }

    # ----- for subclasses -----------------------------------------------------------------------------
    @abstractmethod
    def perturb(self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Through
                ) -> torch.Tensor:
        """Return x_adv (N, 3, H, W) in [-1, 1] (not yet quantised), optimised ``through`` a channel."""

    @torch.no_grad()
    def clean_outputs(self, x: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """G(x, c) for every forger, as (N*T, 3, H, W) tensors: the references of the distort objective."""
        xs, cs = expand_targets(x, targets)
        return [f(xs, cs) for f in self.forgers]

    def loss(
        self, x_adv: torch.Tensor, x: torch.Tensor, targets: torch.Tensor, refs: list[torch.Tensor],
        gen: torch.Generator, through: Through | None = None,
    ) -> torch.Tensor:
        """The quantity to maximise, summed over forgers, targets and images (mean over pixels), averaged
        over the draws of ``through`` (default the method's own)."""
        through = through or self.through
        total = x_adv.new_zeros(())
        n_t = targets.shape[1]
        # A channel (core.channel) sends protected and clean faces through one shared draw: the edits are
        # then compared as the receipt compares them, under the same condition and framing.
        pair = getattr(through.eot, "pair", None)
        for _ in range(through.samples):
            goal = x
            if pair is not None:
                seen, goal = pair(x_adv, x, generator=gen)
                with torch.no_grad():
                    refs = [forger(*expand_targets(goal, targets)) for forger in self.forgers]
            else:
                seen = through.eot(x_adv, generator=gen) if through.eot is not None else x_adv
            xs, cs = expand_targets(seen, targets)
            for forger, ref in zip(self.forgers, refs, strict=True):
                out = forger(xs, cs)
                if self.objective == "distort":
                    per = (out - ref).pow(2).flatten(1).mean(1)
                else:
                    per = -(out - goal.repeat_interleave(n_t, dim=0)).pow(2).flatten(1).mean(1)
                total = total + per.sum()
        return total / through.samples

    def ascend(
        self,
        deltas: list[torch.Tensor],
        render: Callable[[list[torch.Tensor]], torch.Tensor],
        x: torch.Tensor,
        targets: torch.Tensor,
        gen: torch.Generator,
        through: Through,
    ) -> list[torch.Tensor]:
        """Gradient ascent of :meth:`loss` through ``through`` over perturbations ``deltas``, each step by
        :meth:`update`.

        ``render(deltas)`` turns the perturbations (in the method's own domain: RGB, Lab a/b, subbands)
        into the image the forgers see. Starts from ``deltas`` (zeros, or a random start).
        """
        # Through a channel the references are drawn with each step (see :meth:`loss`).
        refs = [] if hasattr(through.eot, "pair") else self.clean_outputs(x, targets)
        velocity: list[torch.Tensor] | None = None
        for _ in range(self.steps):
            checkpoint()  # a cancelled job or a spent time budget stops here (core.interrupt)
            deltas = [d.detach().requires_grad_(True) for d in deltas]
            loss = self.loss(render(deltas), x, targets, refs, gen, through)
            grads = torch.autograd.grad(loss, deltas)
            if through.momentum > 0:
                # MI-FGSM (Dong et al. 2018): an average of L1-normalised gradients steadies the direction
                # when every step sees another random draw of the channel.
                velocity = [through.momentum * v + g / g.abs().mean().clamp(min=1e-12)
                            for v, g in zip(velocity or [torch.zeros_like(g) for g in grads], grads, strict=True)]
                grads = tuple(velocity)
            deltas = [self.update(d, g) for d, g in zip(deltas, grads, strict=True)]
        return [d.detach() for d in deltas]

    def update(self, delta: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """One ascent step of a perturbation along ``grad``, projected back into the budget: a sign step in the
        L-inf box (methods with another budget override it, e.g. :class:`core.methods.pgd_l2.PGDL2`)."""
        return (delta + self.step_size * grad.sign()).clamp(-self.eps, self.eps)

    def start(self, shape: torch.Size, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """The initial perturbation: uniform in the budget with a random start, else zeros."""
        if self.random_start:
            return self.uniform(shape, self.eps, gen, like)
        return torch.zeros(shape, device=like.device, dtype=like.dtype)

    def uniform(self, shape: torch.Size, bound: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        """Seeded uniform noise in [-bound, bound] (drawn on the CPU so results match across devices)."""
        noise = torch.rand(shape, generator=gen) * 2 * bound - bound
        return noise.to(device=like.device, dtype=like.dtype)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["lambda_feat=0.5", "saliency=center"]`` -> ``{"lambda_feat": 0.5, "saliency": "center"}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def expand_targets(x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) and (N, T, A) -> (N*T, 3, H, W) and (N*T, A): one forward pass covers all targets."""
    n, t, a = targets.shape
    return x.repeat_interleave(t, dim=0), targets.reshape(n * t, a).to(x.dtype)


METHODS: Registry[Protection] = Registry("method")
