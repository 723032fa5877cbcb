"""The protection pipeline the CLI and the workers share: build a method with its forgers once, then
protect decoded photos and report how well each one is protected."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.evaluate import measure, summarize
from core.forgers import Forger, create_forger
from core.image import LoadedImage, load_image, quantize, save_image
from core.methods import Protection, create_method
from core.targets import targets_for

_FORGER_CACHE: dict[tuple[str, str, str], Forger] = {}


def load_forger(name: str, checkpoint: str | None = None, device: str = "cpu") -> Forger:
    """A frozen forger, loaded once per process and kept resident."""
    key = (name, checkpoint or "", device)
    if key not in _FORGER_CACHE:
        _FORGER_CACHE[key] = create_forger(name, checkpoint).to(device)
    return _FORGER_CACHE[key]


def build_protection(
    method: str,
    forgers: Sequence[str] = ("stargan",),
    checkpoints: dict[str, str] | None = None,
    device: str = "cpu",
    **options: Any,
) -> Protection:
    """A protection method over resident forgers; ``options`` are the method's (eps, steps, ...)."""
    checkpoints = checkpoints or {}
    loaded = [load_forger(f, checkpoints.get(f), device) for f in forgers]
    clean = {k: v for k, v in options.items() if v is not None}
    return create_method(method, loaded, **clean)


@dataclass
class Protected:
    image: LoadedImage
    x_adv: torch.Tensor
    report: dict[str, Any]


def work_size(protection: Protection) -> int:
    """The resolution a whole photo is protected at: the largest native size among the forgers."""
    return max(f.image_size for f in protection.forgers)


def protect_scaled(protection: Protection, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Protect at the forgers' resolution and map the perturbation back onto the full-size photo.

    A forger sees a photo resized to its own resolution, so that is where the perturbation must act;
    computing it there (instead of at every full-resolution pixel) is also far cheaper. The
    perturbation is upsampled (bilinear) and added to the original pixels, then rounded to 8 bits and
    held to the budget like any output.
    """
    size = work_size(protection)
    h, w = x.shape[-2:]
    if max(h, w) <= size:
        return protection(x, targets=targets)
    small = quantize(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    delta = protection(small, targets=targets) - small
    delta_full = F.interpolate(delta, size=(h, w), mode="bilinear", align_corners=False)
    return protection.finalize(x, (x + delta_full).clamp(-1, 1))


def protect_image(protection: Protection, image: LoadedImage) -> Protected:
    """Protect one decoded photo (the whole image) and measure it as delivered, at full size."""
    device = next(protection.forgers[0].parameters()).device
    x = image.tensor.to(device)
    targets = targets_for(x, protection.attributes)
    start = time.perf_counter()
    x_adv = protect_scaled(protection, x, targets)
    seconds = time.perf_counter() - start
    tally = measure(x, x_adv, targets, protection.forgers, ("clean",))
    summary = summarize(tally, protection, protection.forgers, ("clean",))
    report = {
        "width": image.size[0],
        "height": image.size[1],
        "seconds": seconds,
        "psnr": summary["psnr"],
        "ssim": summary["ssim"],
        "lpips": summary["lpips"],
        "linf": summary["linf_max"],
        "within_budget": protection.within_budget(x, x_adv),
        "forgers": {r["forger"]: {k: r[k] for k in ("success_rate", "distortion", "nullification")}
                    for r in summary["rows"]},
    }
    return Protected(image, x_adv.cpu(), report)


def protect_file(protection: Protection, src: Path, dst: Path) -> dict[str, Any]:
    """Load ``src``, protect it, write ``dst`` (PNG unless its suffix asks otherwise); return the report."""
    result = protect_image(protection, load_image(src))
    save_image(result.x_adv, dst, alpha=result.image.alpha)
    return {"input": str(src), "output": str(dst), **result.report}
