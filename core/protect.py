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

from core.device import resolve_device
from core.evaluate import measure, summarize
from core.forgers import Forger, create_forger
from core.image import LoadedImage, load_image, quantize, save_image
from core.methods import Protection, create_method
from core.targets import select_edits, targets_for
from core.transforms import EoT

_FORGER_CACHE: dict[tuple[str, str, str, str], Forger] = {}


def load_forger(name: str, checkpoint: str | None = None, device: str = "cpu") -> Forger:
    """A frozen forger, loaded once per process and kept resident."""
    from core.checkpoints import checkpoints_dir

    key = (name, checkpoint or "", device, str(checkpoints_dir()))
    if key not in _FORGER_CACHE:
        _FORGER_CACHE[key] = create_forger(name, checkpoint).to(device)
    return _FORGER_CACHE[key]


def build_protection(
    method: str,
    forgers: Sequence[str] = ("stargan",),
    checkpoints: dict[str, str] | None = None,
    device: str = "cpu",
    eot: str | Sequence[str] | None = None,
    **options: Any,
) -> Protection:
    """A protection method over resident forgers.

    ``options`` are the method's (eps, steps, objective, ...; None means its default); ``eot`` names the
    random transforms to optimise through (e.g. "identity,jpeg,blur,resize"), for robustness.
    """
    checkpoints = checkpoints or {}
    device = resolve_device(device)
    loaded = [load_forger(f, checkpoints.get(f), device) for f in forgers]
    clean = {k: v for k, v in options.items() if v is not None}
    if eot:
        names = [n.strip() for n in eot.split(",")] if isinstance(eot, str) else list(eot)
        clean["eot"] = EoT.from_names(names)
    return create_method(method, loaded, **clean)


@dataclass
class Protected:
    image: LoadedImage
    x_adv: torch.Tensor
    report: dict[str, Any]


def work_size(protection: Protection) -> int:
    """The resolution a whole photo is protected at: the largest native size among the forgers."""
    return max(f.image_size for f in protection.forgers)


@dataclass
class Scaled:
    """A full-size protected photo and whether its budget holds where the perturbation was computed."""

    x_adv: torch.Tensor
    within_budget: bool


def protect_many(
    protection: Protection, photos: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]
) -> list[Scaled]:
    """Protect photos of any sizes in one batch at the forgers' resolution, mapped back to full size.

    A forger sees a photo resized to its own resolution, so that is where the perturbation must act;
    computing it there (instead of at every full-resolution pixel) is also far cheaper and lets photos
    of different sizes share one batch. Each perturbation is upsampled (bilinear) and added to the
    original pixels, then rounded to 8 bits and held to the RGB cap like any output. A method's own
    budget (Lab units, Haar subbands) is defined, and checked, at the working resolution.

    Args:
        photos: (1, 3, H_i, W_i) tensors in [-1, 1].
        targets: (1, T, A) attribute targets per photo (same T for all).
    """
    size = work_size(protection)
    smalls = [p if p.shape[-2:] == (size, size) else
              quantize(F.interpolate(p, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
              for p in photos]
    batch = torch.cat(smalls)
    advs = protection(batch, targets=torch.cat(list(targets)))
    out = []
    for photo, small, adv in zip(photos, smalls, advs, strict=True):
        ok = protection.within_budget(small, adv[None])
        if small is photo:
            out.append(Scaled(adv[None], ok))
            continue
        full = F.interpolate((adv - small[0])[None], size=photo.shape[-2:], mode="bilinear", align_corners=False)
        out.append(Scaled(protection.finalize(photo, (photo + full).clamp(-1, 1)), ok))
    return out


def default_classifier() -> Any:
    """The shipped attribute classifier (to pick targets for faces of unknown attributes), or None."""
    from core.checkpoints import CheckpointError, checkpoints_dir
    from core.classifier import load_classifier

    key = str(checkpoints_dir())
    if key not in _CLASSIFIERS:
        try:
            _CLASSIFIERS[key] = load_classifier()
        except CheckpointError:
            _CLASSIFIERS[key] = None
    return _CLASSIFIERS[key]


_CLASSIFIERS: dict[str, Any] = {}


def protect_images(
    protection: Protection, images: Sequence[LoadedImage], only: Sequence[str] | None = None
) -> list[Protected]:
    """Protect decoded photos in one batch; measure each as delivered, at full size (the receipt).

    Targets are every single-attribute edit of each face, starting from the attributes the shipped
    classifier reads (the fixed neutral set without it); ``only`` names the attributes whose edits to cover.
    """
    device = next(protection.forgers[0].parameters()).device
    xs = [image.tensor.to(device) for image in images]
    classifier = default_classifier()
    if classifier is not None:
        classifier = classifier.to(device)
    targets = [select_edits(targets_for(x, protection.attributes, classifier=classifier), protection.attributes,
                            only) for x in xs]
    start = time.perf_counter()
    results = protect_many(protection, xs, targets)
    seconds = (time.perf_counter() - start) / max(len(images), 1)
    return [Protected(image, r.x_adv.cpu(), photo_report(protection, x, r, t, seconds))
            for image, x, r, t in zip(images, xs, results, targets, strict=True)]


def protect_image(protection: Protection, image: LoadedImage) -> Protected:
    """Protect one decoded photo (the whole image) and measure it as delivered, at full size."""
    return protect_images(protection, [image])[0]


def photo_report(
    protection: Protection, x: torch.Tensor, result: Scaled, targets: torch.Tensor, seconds: float
) -> dict[str, Any]:
    """Quality of the delivered photo and the forgers' success rate on it.

    The forgers are run on the whole photo resized to their resolution, as this pipeline protects it; an
    attacker who crops the face from a large photo sees a weaker perturbation (face detection and
    alignment come with the full-resolution pipeline).
    """
    tally = measure(x, result.x_adv, targets, protection.forgers, ("clean",))
    summary = summarize(tally, protection, protection.forgers, ("clean",))
    return {
        "width": int(x.shape[-1]),
        "height": int(x.shape[-2]),
        "seconds": seconds,
        "psnr": summary["psnr"],
        "ssim": summary["ssim"],
        "lpips": summary["lpips"],
        "linf": summary["linf_max"],
        "within_budget": result.within_budget,
        "forgers": {r["forger"]: {k: r[k] for k in ("success_rate", "distortion", "nullification")}
                    for r in summary["rows"]},
    }


def protect_file(protection: Protection, src: Path, dst: Path) -> dict[str, Any]:
    """Load ``src``, protect it, write ``dst`` (PNG unless its suffix asks otherwise); return the report."""
    result = protect_image(protection, load_image(src))
    save_image(result.x_adv, dst, alpha=result.image.alpha, icc_profile=result.image.icc_profile)
    return {"input": str(src), "output": str(dst), **result.report}
