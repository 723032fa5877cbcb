"""Expectation over transformation (EoT, Athalye et al. 2018) for the protection methods.

A protection optimised against the forger on the exact pixels it produced is often undone by a JPEG
re-encode or a resize. EoT instead draws a random differentiable transform at every optimisation
step and back-propagates through it, so the perturbation is optimised for the *expected* loss over
the transforms it will meet. ``EoT.none()`` is the identity, for methods run without EoT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from core.faces import PHOTO_FRAMING, Frame
from core.transforms.filters import box_blur, gaussian_blur, random_reframe, reframe, rescale, seeded
from core.transforms.jpeg import diff_jpeg


@dataclass(frozen=True)
class TransformSpec:
    """A differentiable transform ``fn(x, param)`` whose parameter is drawn uniformly from [low, high].

    ``integer=True`` draws an integer in ``low..high`` inclusive (e.g. a JPEG quality). When
    ``low == high`` the parameter is fixed and no random number is drawn for it.
    """

    name: str
    fn: Callable[[Tensor, float], Tensor]
    low: float = 0.0
    high: float = 0.0
    integer: bool = False

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"transform {self.name!r}: low {self.low} > high {self.high}")

    def sample_param(self, generator: torch.Generator | None = None) -> float:
        """Draw the parameter (a Python number) from ``generator`` (the global RNG when None)."""
        if self.low == self.high:
            return self.low
        u = _uniform(generator)
        if self.integer:
            # floor(u * n) with u in [0, 1) is uniform over 0..n-1; min() guards float rounding at u ~ 1.
            n = int(self.high) - int(self.low) + 1
            return float(min(int(self.low) + int(u * n), int(self.high)))
        return self.low + u * (self.high - self.low)

    def __call__(self, x: Tensor, param: float) -> Tensor:
        return self.fn(x, param)


def _uniform(generator: torch.Generator | None) -> float:
    # Draw on the generator's own device (a CUDA generator cannot fill a CPU tensor).
    device = generator.device if generator is not None else None
    return float(torch.rand((), generator=generator, device=device).item())


def _identity(x: Tensor, _: float) -> Tensor:
    return x


def _jpeg(x: Tensor, quality: float) -> Tensor:
    return diff_jpeg(x, int(quality))


def _framing(x: Tensor, seed: float) -> Tensor:
    """The crop as an attacker's detector frames the face: one draw of the photo framing spread
    (:data:`core.faces.PHOTO_FRAMING`, a quarter larger or smaller, a percent off centre, degrees of tilt)."""
    off = PHOTO_FRAMING.offset(Frame(0.0, 0.0, 1.0), seeded(seed))  # a unit square: offsets are fractions
    return reframe(x, (off.cx, off.cy), off.side, off.angle)


def chain(specs: Sequence[TransformSpec]) -> TransformSpec:
    """One transform applying ``specs`` in order (``"framing+jpeg"``: a re-crop, then a re-encode), each with
    its own parameter drawn from the chain's, a seed in [0, 1), so that a draw stays one number."""
    specs = list(specs)

    def apply(x: Tensor, seed: float) -> Tensor:
        gen = seeded(seed)
        for spec in specs:
            x = spec(x, spec.sample_param(gen))
        return x

    return TransformSpec("+".join(s.name for s in specs), apply, 0.0, 1.0)


# Default ranges: JPEG qualities that platforms actually use (social networks re-encode at ~70..90),
# blurs that keep a face recognisable, and downscales a platform might store at.
DEFAULT_TRANSFORMS: dict[str, TransformSpec] = {
    "identity": TransformSpec("identity", _identity),
    "jpeg": TransformSpec("jpeg", _jpeg, 50, 95, integer=True),
    "blur": TransformSpec("blur", gaussian_blur, 0.5, 1.5),
    "resize": TransformSpec("resize", rescale, 0.5, 0.9),
    "avgblur": TransformSpec("avgblur", lambda x, k: box_blur(x, int(k)), 2, 9, integer=True),
    "wideblur": TransformSpec("wideblur", gaussian_blur, 0.5, 3.0),
    # a detector's new framing of the face: the parameter seeds the shift, scale and rotation it draws
    "reframe": TransformSpec("reframe", random_reframe, 0.0, 1.0),
    # the framing spread protections of photos are optimised over (core.faces.Framing), on an aligned crop
    "framing": TransformSpec("framing", _framing, 0.0, 1.0),
}

# Names that stand for several transforms. "spread": the spread-spectrum evasion of blur defences of Ruiz et
# al. (Disrupting Deepfakes, 2020): a defender may blur the input with a Gaussian or an average filter of a
# size the attacker does not know, so every step meets one drawn from the whole spectrum of both.
GROUPS: dict[str, tuple[str, ...]] = {"spread": ("wideblur", "avgblur")}


class EoT:
    """Draws one transform (and its parameter) per call from a list of :class:`TransformSpec`.

    Example::

        eot = EoT.from_names(["identity", "jpeg", "blur", "resize"])
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            loss = criterion(forger(eot(x_adv, g)))
            ...

    Calls are deterministic given the generator's state: the transform index is drawn first (only
    when there is more than one), then the parameter (only when its range is not a single value).
    """

    def __init__(self, transforms: Sequence[TransformSpec]) -> None:
        if not transforms:
            raise ValueError("EoT needs at least one transform (use EoT.none() for the identity)")
        self.transforms = list(transforms)

    @classmethod
    def from_names(cls, names: Sequence[str], ranges: Mapping[str, tuple[float, float]] | None = None) -> EoT:
        """Build from names in :data:`DEFAULT_TRANSFORMS` or :data:`GROUPS`, optionally overriding ranges;
        ``"a+b"`` applies ``a`` then ``b`` as one transform (:func:`chain`).

        Raises:
            ValueError: for an unknown name (the message lists the known ones) or an empty list.
        """
        ranges = dict(ranges or {})
        names = [member for name in names for member in GROUPS.get(name, (name,))]
        parts = [part for name in names for part in name.split("+")]
        unknown = [n for n in [*parts, *ranges] if n not in DEFAULT_TRANSFORMS]
        if unknown:
            known = ", ".join([*DEFAULT_TRANSFORMS, *GROUPS])
            raise ValueError(f"unknown EoT transform(s) {', '.join(map(repr, unknown))}; known: {known}")

        def one(name: str) -> TransformSpec:
            spec = DEFAULT_TRANSFORMS[name]
            if name in ranges:
                low, high = ranges[name]
                spec = replace(spec, low=low, high=high)
            return spec

        return cls([one(n) if "+" not in n else chain([one(p) for p in n.split("+")]) for n in names])

    @classmethod
    def none(cls) -> EoT:
        """The identity: no transform, and no random numbers drawn."""
        return cls([DEFAULT_TRANSFORMS["identity"]])

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.transforms]

    @property
    def is_identity(self) -> bool:
        return all(t.name == "identity" for t in self.transforms)

    def sample(self, generator: torch.Generator | None = None) -> tuple[TransformSpec, float]:
        """Draw a transform and its parameter; uses the global RNG when ``generator`` is None."""
        if len(self.transforms) == 1:
            spec = self.transforms[0]
        else:
            device = generator.device if generator is not None else None
            index = int(torch.randint(len(self.transforms), (), generator=generator, device=device).item())
            spec = self.transforms[index]
        return spec, spec.sample_param(generator)

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Apply one randomly drawn transform to the whole ``(N, 3, H, W)`` [-1, 1] batch (differentiable)."""
        spec, param = self.sample(generator)
        return spec(x, param)

    def __repr__(self) -> str:
        parts = [t.name if t.low == t.high else f"{t.name}[{t.low:g}..{t.high:g}]" for t in self.transforms]
        return f"EoT({', '.join(parts)})"
