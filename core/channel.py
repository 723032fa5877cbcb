"""The attacker's channel: what happens to a protected face between Veil and a forger, differentiably.

A protected photo reaches a forger after a platform re-encodes or shrinks it and after the attacker's own
face detector frames the face again (a few percent off the framing Veil used) and resamples the crop to the
forger's input size. A perturbation that ignores any of these steps is mostly lost (on the sample portrait a
64 px perturbation pasted into the photo gave 0 % on the attacker's re-crop). :class:`AttackerChannel`
simulates the whole journey of one face's *window of the photo at the photo's own resolution*:

1. the perturbation is confined to the face's square (:func:`square_mask`, feathered): the rest of the
   photo is never changed;
2. the platform, on the photo: JPEG with 4:2:0 chroma (:func:`core.transforms.jpeg.diff_jpeg`, quality
   drawn from :attr:`ChannelSpec.jpeg`; WebP, also a block transform coder with 4:2:0 chroma, has no
   differentiable model here and is stood in for by JPEG), a downscale (and the attacker's upscale), a
   Gaussian blur or sensor-like noise, each with its own probability;
3. the attacker's detector: the face square shifted, scaled and rotated by a framing error drawn from
   :attr:`ChannelSpec.framing` (standard deviations, clipped at 2.5 of them), then aligned and resampled to
   the forger's input (:func:`core.faces.align_crop`).

:meth:`AttackerChannel.pair` sends the protected and the clean window through the *same* draw, so that a
distortion objective compares the forger's edits of the two as the receipt will: under the same condition.
Used as a protection's ``eot`` (the methods call ``pair`` when it exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from core.faces import PHOTO_FRAMING, Frame, Framing, align_crop
from core.transforms.filters import gaussian_blur, rescale
from core.transforms.jpeg import diff_jpeg


@dataclass(frozen=True)
class ChannelSpec:
    """The distribution of platform conditions and framings the channel draws from (one draw per call).

    ``p_*`` are the probabilities of each platform step (independent); ``framing`` None keeps the face's
    own framing (no detector error).
    """

    framing: Framing | None = PHOTO_FRAMING
    p_jpeg: float = 0.5
    jpeg: tuple[int, int] = (50, 95)
    p_resize: float = 0.2
    resize: tuple[float, float] = (0.5, 1.0)
    p_blur: float = 0.1
    blur: tuple[float, float] = (0.3, 1.0)
    p_noise: float = 0.1
    noise: float = 0.02  # largest Gaussian noise standard deviation, on [-1, 1]
    clip: float = 2.5  # framing draws are clipped at this many standard deviations
    # Texture masking: the budget in flat regions (skin, sky) shrinks to this fraction of the budget in
    # textured ones (hair, brows, fabric), where the eye does not see a few levels of noise. 1: uniform.
    flat_budget: float = 1.0
    # How to optimise through it: draws averaged per step, and MI-FGSM momentum over the steps (one draw
    # per step without momentum hardly moves a perturbation that must survive this much: measured, 0-13 %).
    samples: int = 2
    momentum: float = 0.9


IDENTITY = ChannelSpec(framing=None, p_jpeg=0.0, p_resize=0.0, p_blur=0.0, p_noise=0.0)


def texture_mask(x: torch.Tensor, floor: float, window: int = 7, reference: float = 0.06) -> torch.Tensor:
    """(1, 1, H, W) in [floor, 1]: the local contrast of the luminance (its standard deviation over a
    ``window``-pixel neighbourhood, on [0, 1]) over ``reference``, clipped. Visibility of noise falls with the
    local contrast of what it is added to (contrast masking); a flat cheek gets ``floor`` of the budget."""
    if floor >= 1.0:
        return torch.ones_like(x[:, :1])
    luma = (0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3] + 1) / 2
    pad = window // 2
    padded = torch.nn.functional.pad(luma, (pad, pad, pad, pad), mode="replicate")
    mean = torch.nn.functional.avg_pool2d(padded, window, stride=1)
    var = torch.nn.functional.avg_pool2d(padded**2, window, stride=1) - mean**2
    return (var.clamp(min=0).sqrt() / reference).clamp(floor, 1.0)


def square_mask(frame: Frame, height: int, width: int, feather: float = 0.08,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, H, W) weights on a window's pixels: 1 inside ``frame``'s square, a raised cosine down to 0 over
    its outer ``feather`` of the side, 0 outside (the pixels a face's protection may change)."""
    ys = torch.arange(height, device=device, dtype=torch.float64)[:, None] + 0.5 - frame.cy
    xs = torch.arange(width, device=device, dtype=torch.float64)[None, :] + 0.5 - frame.cx
    cos, sin = math.cos(frame.angle), math.sin(frame.angle)
    half = frame.side / 2
    # distance inside the square's nearest edge, in fractions of the feather band
    inside = half - torch.maximum((cos * xs + sin * ys).abs(), (-sin * xs + cos * ys).abs())
    edge = (inside / max(feather * frame.side, 1.0)).clamp(0, 1)
    return (0.5 - 0.5 * torch.cos(math.pi * edge)).float()[None, None]


class AttackerChannel:
    """One face's window of a photo -> what a forger gets of it (see the module docstring).

    Args:
        clean: the clean window (1, 3, H, W) in [-1, 1], cut from the photo on JPEG's 16 px block grid.
        frame: the face's square in window coordinates.
        size: the forger's input size.
        spec: what to draw from.
        mask: the perturbation's weights on the window (default :func:`square_mask` of ``frame``).
    """

    def __init__(self, clean: torch.Tensor, frame: Frame, size: int, spec: ChannelSpec = ChannelSpec(),
                 mask: torch.Tensor | None = None) -> None:
        self.clean = clean
        self.frame = frame
        self.size = size
        self.spec = spec
        h, w = clean.shape[-2:]
        if mask is None:
            mask = square_mask(frame, h, w, device=clean.device) * texture_mask(clean, spec.flat_budget)
        self.mask = mask

    def confine(self, x_adv: torch.Tensor) -> torch.Tensor:
        """The window as delivered: the perturbation weighted by the mask (outside the square: exactly clean)."""
        return self.clean + self.mask * (x_adv - self.clean)

    def draw(self, generator: torch.Generator | None = None) -> dict[str, float]:
        """One draw of the platform and the framing (plain numbers, so a pair can share it)."""
        s = self.spec
        u = torch.rand(12, generator=generator).tolist()
        n = torch.randn(4, generator=generator).clamp(-s.clip, s.clip).tolist()
        out: dict[str, float] = {}
        if u[0] < s.p_resize:
            out["resize"] = s.resize[0] + u[1] * (s.resize[1] - s.resize[0])
        if u[2] < s.p_blur:
            out["blur"] = s.blur[0] + u[3] * (s.blur[1] - s.blur[0])
        if u[4] < s.p_noise:
            out["noise"] = u[5] * s.noise
            out["noise_seed"] = float(int(u[6] * 2**31))
        if u[7] < s.p_jpeg:
            out["jpeg"] = float(min(s.jpeg[1], int(s.jpeg[0] + u[8] * (s.jpeg[1] - s.jpeg[0] + 1))))
        if s.framing is not None:
            f = s.framing
            out.update(dx=n[0] * f.shift, dy=n[1] * f.shift, log_scale=n[2] * f.log_scale + f.span(u[9]),
                       angle=math.radians(n[3] * f.angle))
        return out

    def apply(self, window: torch.Tensor, d: dict[str, float]) -> torch.Tensor:
        """Send a window (1, 3, H, W) through the drawn conditions ``d``: the forger's input (1, 3, S, S)."""
        x = window
        if "resize" in d:
            x = rescale(x, d["resize"])
        if "blur" in d:
            x = gaussian_blur(x, d["blur"])
        if "noise" in d:
            gen = torch.Generator().manual_seed(int(d["noise_seed"]))
            x = (x + d["noise"] * torch.randn(x.shape, generator=gen).to(x)).clamp(-1, 1)
        if "jpeg" in d:
            x = diff_jpeg(x, int(d["jpeg"]))
        fr = self.frame
        if "dx" in d:
            fr = Frame(fr.cx + d["dx"] * fr.side, fr.cy + d["dy"] * fr.side, fr.side * math.exp(d["log_scale"]),
                       fr.angle + d["angle"])
        return align_crop(x, fr, self.size)

    def pair(self, x_adv: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(protected, clean) forger inputs under one shared draw; ``x`` is the clean window (no gradient)."""
        d = self.draw(generator)
        seen = self.apply(self.confine(x_adv), d)
        with torch.no_grad():
            ref = self.apply(x, d)
        return seen, ref

    def __call__(self, x_adv: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(self.confine(x_adv), self.draw(generator))
