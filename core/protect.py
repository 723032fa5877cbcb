"""The protection pipeline the CLI and the workers share: build a method with its forgers once, then
protect decoded photos and report how well each one is protected.

Photos are protected face by face at full resolution (:func:`protect_images`, with :mod:`core.faces`):
each face is cropped as the forgers were trained to see faces, protected at their resolution through a
simulation of the paste back and of an attacker's new crop, and mapped back onto the photo; the report
measures the forgers on the crops an attacker would take of the delivered photo. A photo without a face
is left alone unless the whole-photo protection (:func:`protect_many`'s way) is asked for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.channel import AttackerChannel, ChannelSpec, texture_mask
from core.classifier import default_classifier, default_judge
from core.device import resolve_device
from core.evaluate import PSNR_CAP, Tally, measure, summarize
from core.faces import (
    DEFAULT_MAX_FACES,
    PHOTO_FRAMING,
    Face,
    Frame,
    Framing,
    RoundTrip,
    align_crop,
    box_iou,
    default_detector,
    find_faces,
    held_out_detector,
    paste_back,
)
from core.forgers import Forger, create_forger
from core.image import SUFFIX_FORMATS, LoadedImage, encode_image, load_image, quantize, save_image
from core.interrupt import checkpoint
from core.methods import Protection, Through, create_method, method_class
from core.methods.one_pass import trained_forger_weights
from core.metrics import psnr_from_mse
from core.receipt import (
    RECEIPT_CONDITIONS,
    WHOLE_PHOTO_SIDE,
    attacker_crops,
    bounded,
    effect_tally,
    face_window,
    forger_numbers,
    photo_receipt,
    references,
    verdict,
)
from core.report import PhotoReport, validated
from core.targets import fixed_targets, select_edits, targets_for
from core.transforms import EoT

_FORGER_CACHE: dict[tuple[str, str, str, str], Forger] = {}

# Attacker framings drawn per step of the round trip (with MI-FGSM momentum over the steps). Measured on 12
# photos (benchmarks/results/photos-compact128-pgd-samples{1,2,4}.md): 1, 2 and 4 draws move the edits alike
# (per photo, 0.89x and 0.96x of 2 draws' distortion as delivered, 1.00x and 1.04x at the weakest condition) in
# 17, 27 and 46 s a photo; one draw buys the same protection in two thirds of the time.
ROUND_TRIP_SAMPLES = 1


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

    ``checkpoints`` names the weights of some forgers (manifest entry or file, by forger name); the others
    load their shipped defaults, except under a one-pass method, whose forgers are the weights its generator
    was trained against. ``options`` are the method's (eps, steps, objective, ...; None means its default);
    ``eot`` names the random transforms to optimise through (e.g. "identity,jpeg,blur,resize"), for robustness.
    """
    checkpoints = {**_trained_against(method, forgers, options), **(checkpoints or {})}
    device = resolve_device(device)
    loaded = [load_forger(f, checkpoints.get(f), device) for f in forgers]
    clean = {k: v for k, v in options.items() if v is not None}
    if eot:
        names = [n.strip() for n in eot.split(",")] if isinstance(eot, str) else list(eot)
        clean["eot"] = EoT.from_names(names)
    return create_method(method, loaded, **clean)


def _trained_against(method: str, forgers: Sequence[str], options: dict[str, Any]) -> dict[str, str]:
    """A one-pass method's forgers: the weights its generator was trained against (see
    :func:`core.methods.one_pass.trained_forger_weights`); none for an iterative or untrained one."""
    if not method_class(method).one_pass or options.get("pretrained") is False:
        return {}
    return trained_forger_weights(method, forgers, options.get("checkpoint"))


@dataclass
class Protected:
    image: LoadedImage
    x_adv: torch.Tensor  # the delivered pixels (after the output encoding, for JPEG or WebP)
    report: dict[str, Any]
    encoded: bytes | None = None  # the delivered file, when an output format other than PNG was asked for
    # What the forgers were measured on: the faces as re-detected (None: the whole photo), the edits
    # tried per face (F, T, A) and the edited attributes' names (for previews, see core.previews).
    frames: list[Face] | None = None
    targets: torch.Tensor | None = None
    edits: list[str] | None = None
    faces: list[Face] | None = None  # the faces the perturbation was made for and pasted at


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
    """Protect whole photos of any sizes in one batch at the forgers' resolution, mapped back to full size
    (what :func:`protect_images` does with ``whole_image=True`` to a photo without a face).

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


@dataclass(frozen=True)
class Detected:
    """Stage 1, detect: a decoded photo, the faces to protect (at most ``max_faces``, the surest first), their
    crops at the working size (or the photo squashed to it, to protect it whole) and the edits to cover."""

    image: LoadedImage
    x: torch.Tensor  # the photo, on the protection's device
    faces: tuple[Face, ...]
    found: int  # faces detected (``faces`` holds at most max_faces of them)
    detector: str  # the detector the faces were found (and are protected) with
    crops: torch.Tensor | None = None  # (F, 3, S, S) aligned crops, or (1, 3, S, S); None: left alone
    targets: torch.Tensor | None = None  # (F, T, A)

    @property
    def mode(self) -> str:
        if self.faces:
            return "faces"
        return "whole_image" if self.crops is not None else "no_face"


@dataclass(frozen=True)
class Perturbed:
    """Stage 2, protect: the protected photo (8-bit, capped) and the framing its perturbation was made for
    (a refine round may re-frame the detected faces as an attacker finds them)."""

    detected: Detected
    x_adv: torch.Tensor
    within_budget: bool  # every budget of the protection holds
    faces: tuple[Face, ...] = ()
    crops: torch.Tensor | None = None  # the clean crops at that framing (for the whole photo: squashed)
    advs: torch.Tensor | None = None  # the protected crops at that framing


@dataclass(frozen=True)
class Delivered:
    """Stage 3, deliver: the pixels a reader of the delivered file decodes, and the file when it is lossy."""

    perturbed: Perturbed
    x_adv: torch.Tensor
    encoded: bytes | None
    seconds: float  # protection time per photo of its batch (detection to delivery)


@dataclass(frozen=True)
class Verified:
    """Stage 4, verify: the photo's report (with the receipt) and the faces as its attacker found them."""

    report: dict[str, Any]
    frames: list[Face] | None


def protect_images(
    protection: Protection,
    images: Sequence[LoadedImage],
    only: Sequence[str] | None = None,
    *,
    whole_image: bool = False,
    max_faces: int = DEFAULT_MAX_FACES,
    verify: bool = True,
    output_format: str = "PNG",
    receipt_conditions: Sequence[str] = RECEIPT_CONDITIONS,
    refine: int = 0,
    keep_metadata: bool = False,
    channel: ChannelSpec | None = None,
    detector: str | None = None,
    flat_budget: float = 1.0,
    samples: int = ROUND_TRIP_SAMPLES,
) -> list[Protected]:
    """Protect the faces of decoded photos in one batch; measure each photo as delivered, at full size.

    The pipeline's stages, each with a typed result: :func:`detect` (:class:`Detected`), :func:`perturb`
    (:class:`Perturbed`), :func:`deliver` (:class:`Delivered`) and :func:`verify_photo` (:class:`Verified`).

    Every face found (at most ``max_faces`` per photo, the surest first) is cropped and aligned as the
    forgers were trained to see faces (:mod:`core.faces`), all crops of all photos are protected in one
    batch at the forgers' resolution, and each perturbation is mapped back onto its full-resolution photo
    (feathered; pixels outside the faces are left exactly as they were). A photo with no face is returned
    unchanged with ``"protection": "no_face"`` in its report, unless ``whole_image`` asks for the
    whole-photo protection (:func:`protect_many`) then. With a ``channel`` (:class:`core.channel.ChannelSpec`)
    each face is protected instead on its window of the photo, at the photo's resolution, through the
    attacker's channel.

    Targets are every single-attribute edit of each face, starting from the attributes the shipped
    classifier reads (the fixed neutral set without it); ``only`` names the attributes whose edits to cover.
    ``verify`` measures the forgers as an attacker would meet the photo: faces detected again on the
    protected photo, cropped from it and from the clean photo alike (see :func:`verify_photo`), clean and
    under each of ``receipt_conditions`` (the receipt, :mod:`core.receipt`). ``output_format`` other than
    PNG (JPEG, WEBP) encodes the delivered photo first, so that everything is measured on what is delivered
    (``Protected.encoded`` holds the file; with the source's EXIF when ``keep_metadata``).

    ``refine`` rounds: a face detector frames a protected face a pixel or a percent differently from the
    clean one, and that alone can void a perturbation made for the first framing. Each round detects the
    faces again on the protected photo, as an attacker would, protects the crops of that framing, and keeps
    whichever of the two protections the forgers fail on more often (seen through that same re-detection).
    ``flat_budget`` below 1 shapes each face's budget by texture masking: flat skin gets that share of it
    (with a ``channel``, the channel's own ``flat_budget`` does: one giving both is refused). ``samples``: the
    attacker's framings drawn per optimisation step (with a ``channel``, its own ``samples`` count).
    """
    if max_faces < 1:
        raise ValueError(f"max_faces must be at least 1, got {max_faces}")
    if channel is not None and flat_budget < 1.0:
        raise ValueError("give flat_budget in the channel (ChannelSpec.flat_budget), not beside it")
    if only is not None:  # unknown attribute names fail before any work, whether or not faces are found
        select_edits(fixed_targets(protection.attributes)[None], protection.attributes, only)
    start = time.perf_counter()
    detected = detect(protection, images, only, whole_image=whole_image, max_faces=max_faces, detector=detector)
    perturbed = perturb(protection, detected, channel=channel, refine=refine, max_faces=max_faces,
                        flat_budget=flat_budget, samples=samples)
    files = [deliver(p, output_format, keep_metadata) for p in perturbed]
    seconds = (time.perf_counter() - start) / max(len(images), 1)
    out = []
    for p, (x_adv, encoded) in zip(perturbed, files, strict=True):
        checkpoint()
        delivered = Delivered(p, x_adv, encoded, seconds)
        report_start = time.perf_counter()
        verified = verify_photo(protection, delivered, max_faces, verify, receipt_conditions)
        # The receipt (re-detection, forgers on the protected photo, quality metrics) is compute too.
        report = checked_report({**verified.report, "report_seconds": time.perf_counter() - report_start})
        d = p.detected
        out.append(Protected(d.image, x_adv.cpu(), report, encoded, verified.frames or (list(p.faces) or None),
                             d.targets, list(only) if only is not None else list(protection.attributes),
                             list(p.faces) or None))
    return out


def detect(
    protection: Protection, images: Sequence[LoadedImage], only: Sequence[str] | None = None, *,
    whole_image: bool = False, max_faces: int = DEFAULT_MAX_FACES, detector: str | None = None,
) -> list[Detected]:
    """Stage 1: find each photo's faces, crop them at the working size, and choose the edits to cover (each
    face's own attributes as the shipped classifier reads them, one edited at a time; ``only`` narrows them).
    A photo without a face is squashed whole with ``whole_image``, else left alone."""
    device = next(protection.forgers[0].parameters()).device
    size = work_size(protection)
    classifier = default_classifier()
    if classifier is not None:
        classifier = classifier.to(device)
    detector = detector or default_detector()
    out = []
    for image in images:
        checkpoint()
        found = find_faces(image.tensor, detector=detector)
        x = image.tensor.to(device)
        faces = tuple(found[:max_faces])
        crops = None
        if faces:
            crops = torch.cat([quantize(align_crop(x, face, size)) for face in faces])
        elif whole_image:
            crops = attacker_crops(x, None, size)
        targets = None
        if crops is not None:
            targets = select_edits(targets_for(crops, protection.attributes, classifier=classifier),
                                   protection.attributes, only)
        out.append(Detected(image, x, faces, len(found), detector, crops, targets))
    return out


def perturb(
    protection: Protection, detected: Sequence[Detected], *, channel: ChannelSpec | None = None, refine: int = 0,
    max_faces: int = DEFAULT_MAX_FACES, framing: Framing | None = PHOTO_FRAMING, flat_budget: float = 1.0,
    samples: int = ROUND_TRIP_SAMPLES,
) -> list[Perturbed]:
    """Stage 2: protect every photo that has something to protect; the crops of all photos in one batch, or
    with a ``channel`` each face on its window of the photo (see :func:`protect_images`); then ``refine``.
    The crops are optimised through the paste back and an attacker's new crop, framed as ``framing`` draws
    (:class:`core.faces.RoundTrip`; None: exactly our framing), with each crop's budget shaped by texture
    masking down to ``flat_budget`` of it on flat skin (:func:`core.channel.texture_mask`; 1: uniform), and
    ``samples`` framings drawn per step (at least the method's own ``eot_samples``)."""
    shape = Shaping(framing, flat_budget, samples)  # checked before any work
    at_photo = channel is not None and not protection.one_pass
    out: list[Perturbed | None] = [None] * len(detected)
    batch = []
    for i, d in enumerate(detected):
        if d.crops is None:
            out[i] = Perturbed(d, d.x.clone(), True)
        elif at_photo and d.faces:
            assert channel is not None
            out[i] = _protect_windows(protection, d, channel)
        else:
            batch.append(i)
    advs = _protect_crops(protection, [(detected[i], detected[i].faces, detected[i].crops) for i in batch], shape)
    for i, adv in zip(batch, advs, strict=True):
        d = detected[i]
        out[i] = _paste(protection, d, d.faces, d.crops, adv)
    done = [p for p in out if p is not None]
    return _refine(protection, done, [i for i in batch if detected[i].faces], max_faces, refine, shape)


def deliver(perturbed: Perturbed, output_format: str = "PNG", keep_metadata: bool = False
            ) -> tuple[torch.Tensor, bytes | None]:
    """Stage 3: the delivered pixels, and the file when the output is lossy (JPEG, WebP): then its decoded
    pixels, which a reader of the file will see and everything after measures (with the source's EXIF in
    the file when ``keep_metadata``)."""
    d = perturbed.detected
    if output_format.upper() == "PNG" or d.crops is None:
        return perturbed.x_adv, None
    encoded = encode_image(perturbed.x_adv.cpu(), output_format.upper(), alpha=d.image.alpha,
                           icc_profile=d.image.icc_profile, exif=d.image.exif if keep_metadata else None)
    return load_image(encoded).tensor.to(d.x.device), encoded


# A face is protected at the photo's own resolution up to this many times the forgers' input size; a larger
# face is protected at that size and its perturbation upsampled (a forger sees it downscaled far more anyway).
WINDOW_SCALE = 4


def _protect_windows(protection: Protection, d: Detected, spec: ChannelSpec) -> Perturbed:
    """Protect each face on its window of the photo, at the photo's resolution, through the attacker's channel
    (:mod:`core.channel`): only the faces' squares change."""
    assert d.targets is not None
    size = work_size(protection)
    h, w = d.x.shape[-2:]
    total = torch.zeros_like(d.x)
    for face, targets in zip(d.faces, d.targets, strict=True):
        checkpoint()
        frame = face.frame()
        x0, y0, x1, y1 = face_window(frame, w, h)
        window = d.x[..., y0:y1, x0:x1]
        k = min(1.0, WINDOW_SCALE * size / frame.side)
        local = Frame((frame.cx - x0) * k, (frame.cy - y0) * k, frame.side * k, frame.angle)
        work = window if k == 1.0 else quantize(F.interpolate(
            window, scale_factor=k, mode="bilinear", antialias=True, align_corners=False))
        channel = AttackerChannel(work, local, size, spec)
        adv = protection(work, targets=targets[None], through=Through(channel, spec.samples, spec.momentum))
        delta = channel.mask * (adv - work)
        if k != 1.0:
            delta = F.interpolate(delta, size=window.shape[-2:], mode="bilinear", align_corners=False)
        total[..., y0:y1, x0:x1] += delta
    changed = total.abs().amax(dim=1, keepdim=True) > 0
    x_adv = torch.where(changed, protection.finalize(d.x, (d.x + total).clamp(-1, 1)), d.x)
    ok = bool(((x_adv - d.x).abs().amax() <= protection.linf_cap() + 1e-6).item())
    # the crops as the forgers see them at the faces' own framing: for the per-face report
    advs = torch.cat([quantize(align_crop(x_adv, face, size)) for face in d.faces])
    return Perturbed(d, x_adv, ok, d.faces, d.crops, advs)


# One photo's crops to protect: the photo, the framing of its faces (none: the photo squashed whole), the crops.
Framed = tuple[Detected, tuple[Face, ...], torch.Tensor | None]


@dataclass(frozen=True)
class Shaping:
    """How crops are optimised and shaped: the attacker framing modelled, the texture-masking floor, the
    framings drawn per step."""

    framing: Framing | None = PHOTO_FRAMING
    flat_budget: float = 1.0
    samples: int = ROUND_TRIP_SAMPLES

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")


def _protect_crops(protection: Protection, items: Sequence[Framed], shape: Shaping = Shaping()
                   ) -> list[torch.Tensor]:
    """The protected crops of every item, computed in one batch."""
    if not items:
        return []
    crops = torch.cat([c for _, _, c in items if c is not None])
    targets = torch.cat([d.targets for d, _, _ in items if d.targets is not None])
    frames: list[tuple[Frame, torch.Tensor] | None] = []
    for d, faces, _ in items:
        frames += [(face.frame(), d.x) for face in faces] if faces else [None]
    # optimise what an attacker's crop of the delivered photo will hold, not the crop itself
    # framings drawn per step, with the channel's MI-FGSM momentum carrying each step's draw into the next
    # (without momentum one draw of so wide a framing spread a step hardly moves the perturbation)
    budget = None if shape.flat_budget >= 1.0 else texture_mask(crops, shape.flat_budget)
    through = Through(RoundTrip(crops, frames, framing=shape.framing, then=protection.eot, budget=budget),
                      max(shape.samples, protection.eot_samples), ChannelSpec.momentum)
    advs = protection(crops, targets=targets, through=through)
    if budget is not None:  # what the round trip delivered: the shaped share of each perturbation
        advs = quantize(crops + budget * (advs - crops))
    return list(advs.split([len(c) for _, _, c in items if c is not None]))


def _paste(protection: Protection, d: Detected, faces: tuple[Face, ...], crops: torch.Tensor | None,
           advs: torch.Tensor) -> Perturbed:
    """The full-size protected photo (8-bit, capped) from protected crops at the framing ``faces``."""
    assert crops is not None
    ok = all(protection.within_budget(c[None], a[None]) for c, a in zip(crops, advs, strict=True))
    if faces:
        x_adv = paste_back(d.x, advs, list(faces), crops, finalize=protection.finalize)
    elif crops.shape[-2:] == d.x.shape[-2:]:
        x_adv = advs
    else:
        full = F.interpolate(advs - crops, size=d.x.shape[-2:], mode="bilinear", align_corners=False)
        x_adv = protection.finalize(d.x, (d.x + full).clamp(-1, 1))
    ok = ok and bool(((x_adv - d.x).abs().amax() <= protection.linf_cap() + 1e-6).item())
    return Perturbed(d, x_adv, ok, faces, crops, advs)


def attacker_frames(x_adv: torch.Tensor, faces: Sequence[Face], detector: str, max_faces: int
                     ) -> tuple[list[Face], list[bool]]:
    """The faces as ``detector`` finds them again on the protected photo, matched to ``faces`` by overlap,
    and which matched (an unmatched face keeps its own framing)."""
    again = find_faces(x_adv.cpu(), max_faces=max(max_faces, len(faces)) * 2, detector=detector)
    frames: list[Face] = []
    matched: list[bool] = []
    for face in faces:
        best = max(again, key=lambda f: box_iou(f.box, face.box), default=None)
        hit = best is not None and box_iou(best.box, face.box) >= 0.3
        frames.append(best if hit and best is not None else face)
        matched.append(hit)
    return frames, matched


def _receipt_frames(x_adv: torch.Tensor, faces: Sequence[Face], detector: str, max_faces: int
                    ) -> tuple[list[Face], list[bool], list[bool]]:
    """The faces as the receipt's attacker finds them: by the held-out detector where it finds them, else by
    the protection's own ``detector`` again; (frames, redetected, held_out)."""
    other = held_out_detector(detector)
    frames, matched = attacker_frames(x_adv, faces, other, max_faces)
    if other == detector or all(matched):
        return frames, matched, [m and other != detector for m in matched]
    own, own_matched = attacker_frames(x_adv, faces, detector, max_faces)
    return ([f if m else o for f, m, o in zip(frames, matched, own, strict=True)],
            [m or om for m, om in zip(matched, own_matched, strict=True)], matched)


def _attacker_success(protection: Protection, p: Perturbed, frames: Sequence[Face]) -> float:
    """Mean success rate of the forgers on the attacker's crops (``frames``) of the protected photo."""
    d = p.detected
    assert d.targets is not None
    size = work_size(protection)
    tally = measure(attacker_crops(d.x, frames, size), attacker_crops(p.x_adv, frames, size), d.targets,
                    protection.forgers, ("clean",))
    rates = [v["success_rate"] for v in forger_numbers(tally, protection.forgers).values()
             if v["success_rate"] is not None]
    return sum(rates) / len(rates) if rates else 0.0


def _refine(protection: Protection, results: list[Perturbed], open_: list[int], max_faces: int, rounds: int,
            shape: Shaping = Shaping()) -> list[Perturbed]:
    """Protect ``results[i]`` (i in ``open_``) again for the framing an attacker finds on it; keep the better
    (see :func:`protect_images`). A photo whose new framing did no better is not tried again: the same
    framing would give the same result."""
    results, open_ = list(results), list(open_)
    size = work_size(protection)
    for _ in range(rounds):
        tries: list[tuple[int, tuple[Face, ...], torch.Tensor, float]] = []
        for i in open_:
            p = results[i]
            frames, matched = attacker_frames(p.x_adv, p.faces, p.detected.detector, max_faces)
            score = _attacker_success(protection, p, frames)
            if score < 1.0 and any(matched):
                crops = torch.cat([quantize(align_crop(p.detected.x, f, size)) for f in frames])
                tries.append((i, tuple(frames), crops, score))
        if not tries:
            break
        advs = _protect_crops(protection, [(results[i].detected, f, c) for i, f, c, _ in tries], shape)
        for (i, found, crops, score), adv in zip(tries, advs, strict=True):
            candidate = _paste(protection, results[i].detected, found, crops, adv)
            seen = attacker_frames(candidate.x_adv, candidate.faces, candidate.detected.detector, max_faces)[0]
            if _attacker_success(protection, candidate, seen) < score:
                open_.remove(i)
            else:
                results[i] = candidate
    return results


def meets(report: dict[str, Any], min_success: float) -> bool:
    """Whether the photo's receipt shows at least ``min_success`` under every condition it measured."""
    lowest = (report.get("receipt") or {}).get("min_success_rate")
    return lowest is not None and lowest >= min_success - 1e-9


@dataclass
class Attempted:
    """A photo's last protection under a ``min_success`` requirement: the result, what made it, the tries."""

    result: Protected
    protection: Protection
    attempts: int = 1


# A retry for --min-success also re-protects the framing a detector finds on the protected photo: on 20 photos
# against the 128 px StarGAN one such round moved pgd's edits 25 % further (0.0157 against 0.0125 as delivered;
# 0.0068 against 0.0058 at the weakest condition, where neither defeats an edit) in 1.8 times the time, so it is
# spent only where the receipt asks for more (benchmarks/results/photos-compact128-pgd-refine{0,1}.md).
RETRY_REFINE = 1


def refine_rounds(refine: int, attempt: int) -> int:
    """The refine rounds of a protect_until attempt: ``refine`` first, at least :data:`RETRY_REFINE` on a retry."""
    return refine if attempt == 1 else max(refine, RETRY_REFINE)


def protect_until(
    run: Callable[[Protection, Sequence[LoadedImage], int], list[Protected]],
    protection: Protection,
    images: Sequence[LoadedImage],
    min_success: float | None,
    stronger: Sequence[Callable[[], Protection]] = (),
) -> list[Attempted]:
    """``run(protection, images, 1)``; then, while a photo's receipt is below ``min_success``, again for the
    photos still short with each of ``stronger`` (builders of stronger protections, weakest first), the attempt's
    number last (a retry refines at least :data:`RETRY_REFINE` rounds). Each photo keeps its last attempt,
    which :func:`record_min_success` then judges."""
    done = [Attempted(r, protection) for r in run(protection, images, 1)]
    for attempt, make in enumerate(stronger if min_success is not None else (), start=2):
        short = [i for i, a in enumerate(done) if not meets(a.result.report, min_success or 0.0)]
        if not short:
            break
        prot = make()
        for i, result in zip(short, run(prot, [images[i] for i in short], attempt), strict=True):
            done[i] = Attempted(result, prot, attempt)
    return done


def record_min_success(report: dict[str, Any], min_success: float, attempted: Attempted) -> str | None:
    """Write the requirement's outcome into the report; return why the photo fails it, or None."""
    ok = meets(report, min_success)
    receipt = report.get("receipt") or {}
    prot = attempted.protection
    report["min_success"] = {"required": min_success, "met": ok, "attempts": attempted.attempts, "core_eps": prot.eps}
    if ok:
        return None
    return (f"min_success {min_success:g} not met: the receipt's lowest success rate is "
            f"{receipt.get('min_success_rate')} ({receipt.get('weakest')}) after {attempted.attempts} attempt(s), "
            f"the last at eps {prot.eps:g} ({prot.budget_units})")


def protect_image(protection: Protection, image: LoadedImage, **options: Any) -> Protected:
    """Protect one decoded photo (its faces; see :func:`protect_images` for the options) and measure it."""
    return protect_images(protection, [image], **options)[0]


def verify_photo(
    protection: Protection, delivered: Delivered, max_faces: int = DEFAULT_MAX_FACES, verify: bool = True,
    receipt_conditions: Sequence[str] = RECEIPT_CONDITIONS,
) -> Verified:
    """Stage 4: quality of the delivered photo and the forgers' success rate on it (the report), and the faces
    as the receipt's attacker found them on it. The report:

    - ``protection``: ``faces`` (each face found was protected), ``whole_image`` (no face: the whole photo
      was protected, squashed to the forgers' resolution) or ``no_face`` (returned unchanged);
      ``faces_found`` counts the faces detected (``faces_skipped`` those beyond ``max_faces``).
    - ``psnr``, ``ssim``, ``lpips``: the delivered photo against the original, where it was changed: over
      the face regions (each face's square; PSNR from their pooled squared error, SSIM and LPIPS weighted
      by area), so that neither the untouched rest of a large photo flatters them nor measuring it costs
      seconds; over the whole photo for ``whole_image``; None for ``no_face``. ``linf``: the whole photo.
      ``max_change_levels`` and ``changed_share``: the same change in a user's units (see :func:`change_of`).
      SSIM and LPIPS of a region or photo larger than :data:`QUALITY_SIDE` are of it downscaled to that size.
    - ``faces``: per protected face its ``box`` (x, y, w, h in pixels), detector ``score``, eye
      ``landmarks`` when found, ``angle`` (degrees the crop was rotated to level the eyes), ``region``
      (x0, y0, x1, y1: the pixels the protection may change) with its ``psnr``, ``ssim`` and ``lpips``,
      ``within_budget`` and the forgers' numbers as an attacker meets them: the faces are detected again on
      the delivered photo, and the same crop is taken of it and of the clean photo; a pair (face, edit) is
      defended when the forger's edit of the protected crop is far from its edit of the clean crop.
      ``redetected`` says whether the face was found again (if not, the original crop is measured).
    - ``forgers``: those numbers over all faces (for ``whole_image``, the whole photo resized, as protected).
    - ``within_budget``: the protection's budget held (before a lossy output encoding); ``lossy_output``:
      the numbers are of the JPEG/WebP file as decoded, whose compression error adds to ``linf``.
    - ``receipt`` (with ``verify``, when something was protected): :func:`core.receipt.photo_receipt` over
      ``receipt_conditions``, on the attacker's crops of the whole delivered photo.
    """
    p = delivered.perturbed
    d = p.detected
    x, x_adv, mode = d.x, delivered.x_adv, d.mode
    report: dict[str, Any] = {
        "width": int(x.shape[-1]),
        "height": int(x.shape[-2]),
        "seconds": delivered.seconds,
        "protection": mode,
        "faces_found": d.found,
        "detector": d.detector,
    }
    if d.found > len(d.faces):
        report["faces_skipped"] = d.found - len(d.faces)
    quality: dict[str, Any] = {"psnr": None, "ssim": None, "lpips": None}  # unchanged: nothing to compare
    if mode == "whole_image":
        quality = _quality(protection, x, x_adv)
    elif mode == "faces":
        quality = _face_quality(protection, x, x_adv, p.faces)
    report.update({
        "psnr": quality["psnr"],
        "ssim": quality["ssim"],
        "lpips": _lpips_or_none(quality["lpips"]),
        "lpips_available": quality["lpips"] != "unavailable",  # else LPIPS's weights are missing (`veil weights`)
        **change_of(x, x_adv),
        "within_budget": p.within_budget,  # of the protection, before any lossy output encoding
        "lossy_output": delivered.encoded is not None,  # then every number here is of the decoded file
        "faces": [],
        "forgers": {},
    })
    frames: list[Face] | None = None
    if mode == "whole_image" and d.targets is not None:
        size = work_size(protection)  # the forgers see the photo resized, as it was protected
        tally = measure(attacker_crops(x, None, size), attacker_crops(x_adv, None, size), d.targets,
                        protection.forgers, ("clean",), judge=default_judge())
        report["forgers"] = forger_numbers(tally, protection.forgers)
    elif mode == "faces":
        report["faces"], report["forgers"], frames = _face_reports(protection, delivered, max_faces, verify)
        for entry, region in zip(report["faces"], quality.pop("regions"), strict=True):
            entry.update(region)
    if verify and d.targets is not None and mode != "no_face":
        # the report's forger numbers are the receipt's clean condition (same crops): not measured twice
        report["receipt"] = photo_receipt(protection.forgers, x, x_adv, frames, d.targets,
                                          work_size(protection), receipt_conditions,
                                          measured={"clean": report["forgers"]} if report["forgers"] else None,
                                          judge=default_judge())
        report["receipt"]["scope"] = "faces" if mode == "faces" else "whole_photo"
        if mode == "whole_image":
            report["receipt"]["note"] = WHOLE_PHOTO_NOTE
        report["receipt"]["verdict"] = verdict(report["receipt"])
    return Verified(report, frames)


def change_of(x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, Any]:
    """How much a photo changed, from one difference image (a 12 MP photo's is 36 M values): ``linf`` on
    [-1, 1], the same in units its owner can read (the largest change of any colour channel in 8-bit levels
    of 255: a channel on [-1, 1] moves 127.5 levels per unit), and the share of the photo's pixels that changed
    at all (a face-only protection leaves the rest exactly as it was)."""
    diff = (x_adv - x).abs()
    linf = float(diff.max())
    return {"linf": linf, "max_change_levels": round(linf * 127.5),
            "changed_share": float((diff.amax(dim=-3) > 0.5 / 127.5).double().mean())}


# What a receipt of a photo protected whole must say, so that nobody reads it as "my face is protected".
WHOLE_PHOTO_NOTE = ("No face was found in this photo, so it was protected as one whole picture. These numbers are "
                    "for the forgers' edits of the whole picture shrunk to their size, not of a face: they do not "
                    "show that a face in this photo is protected.")


def checked_report(report: dict[str, Any]) -> dict[str, Any]:
    """A photo's report as :class:`core.report.PhotoReport` declares it (raises where it does not)."""
    return validated(PhotoReport, report)


def _lpips_or_none(value: Any) -> float | None:
    """LPIPS as the report has it: a number, or None (nothing compared, or ``"unavailable"``)."""
    return value if isinstance(value, float) else None


# SSIM and LPIPS of a region (or a whole photo) larger than this (long side) are measured on it downscaled to
# it: LPIPS's network on a 40-megapixel photo takes many minutes and gigabytes. PSNR is always exact. The
# receipt's conditions of a photo protected whole are bounded alike.
QUALITY_SIDE = WHOLE_PHOTO_SIDE


def _psnr(mse: float) -> float:
    """PSNR (dB) of images in [-1, 1] from their mean squared error, capped as the tallies cap it."""
    return min(PSNR_CAP, psnr_from_mse(mse))


def _quality(protection: Protection, x: torch.Tensor, x_adv: torch.Tensor) -> dict[str, Any]:
    """PSNR, SSIM, LPIPS of x_adv against x (as :func:`core.evaluate.summarize` gives them), SSIM and LPIPS
    at most at :data:`QUALITY_SIDE`."""
    no_targets = torch.zeros(1, 1, len(protection.attributes))
    if max(x.shape[-2:]) <= QUALITY_SIDE:
        return summarize(measure(x, x_adv, no_targets, ()), protection, (), ("clean",))
    small, small_adv = bounded(x, QUALITY_SIDE), bounded(x_adv, QUALITY_SIDE)
    out = summarize(measure(small, small_adv, no_targets, ()), protection, (), ("clean",))
    out["psnr"] = _psnr(float((x_adv - x).double().pow(2).mean()))
    return out


def _face_quality(protection: Protection, x: torch.Tensor, x_adv: torch.Tensor, faces: Sequence[Face]
                  ) -> dict[str, Any]:
    """Quality over each face's region, and pooled over them (see :func:`verify_photo`)."""
    h, w = x.shape[-2:]
    regions: list[dict[str, Any]] = []
    sq_err = pixels = 0.0
    weighted: dict[str, float] = {"ssim": 0.0, "lpips": 0.0}
    lpips_known = True
    for face in faces:
        bounds = face.frame().bounds(w, h) or (0, 0, w, h)
        x0, y0, x1, y1 = bounds
        a, b = x[..., y0:y1, x0:x1], x_adv[..., y0:y1, x0:x1]
        q = _quality(protection, a, b)
        area = float((x1 - x0) * (y1 - y0))
        sq_err += float((b - a).double().pow(2).sum()) / 3
        pixels += area
        weighted["ssim"] += (q["ssim"] or 0.0) * area
        if isinstance(q["lpips"], float):
            weighted["lpips"] += q["lpips"] * area
        else:
            lpips_known = False
        regions.append({"region": list(bounds), "psnr": q["psnr"], "ssim": q["ssim"],
                        "lpips": _lpips_or_none(q["lpips"])})
    return {
        "psnr": _psnr(sq_err / max(pixels, 1.0)),
        "ssim": weighted["ssim"] / pixels if pixels else None,
        "lpips": weighted["lpips"] / pixels if pixels and lpips_known else "unavailable",
        "regions": regions,
    }


def _face_reports(
    protection: Protection, delivered: Delivered, max_faces: int, verify: bool
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[Face]]:
    """Per face: where, within budget, and the forgers' numbers on the attacker's crops; those over all faces;
    and the attacker's framing of the faces (with ``verify``; else the protected framing)."""
    p = delivered.perturbed
    d, x_adv = p.detected, delivered.x_adv
    assert p.crops is not None and p.advs is not None and d.targets is not None
    size = p.crops.shape[-1]
    if verify:
        frames, matched, held_out = _receipt_frames(x_adv, p.faces, d.detector, max_faces)
        clean, seen = attacker_crops(d.x, frames, size), attacker_crops(x_adv, frames, size)
    else:  # the crops the protection was computed on
        frames, matched, held_out = list(p.faces), [False] * len(p.faces), [False] * len(p.faces)
        clean, seen = p.crops, p.advs
    judge = default_judge() if verify else None
    refs = references(protection.forgers, clean, d.targets, judge)  # all faces' clean edits in one pass
    overall = Tally()
    reports = []
    for i, face in enumerate(p.faces):
        tally = effect_tally(protection.forgers, {n: r.face(i) for n, r in refs.items()}, seen[i : i + 1], judge)
        overall.merge(tally)
        numbers = forger_numbers(tally, protection.forgers)
        rates = [v["success_rate"] for v in numbers.values() if v["success_rate"] is not None]
        entry = {
            **face.to_dict(),
            "angle": round(math.degrees(face.angle), 2),
            "within_budget": protection.within_budget(p.crops[i : i + 1], p.advs[i : i + 1]),
            "success_rate": sum(rates) / len(rates) if rates else None,
            "forgers": numbers,
        }
        if verify:
            entry["redetected"] = matched[i]
            # the attacker's detector: the held-out one (which the protection never saw) where it found the face
            entry["receipt_detector"] = held_out_detector(d.detector) if held_out[i] else d.detector
        reports.append(entry)
    return reports, forger_numbers(overall, protection.forgers), frames


def protect_file(
    protection: Protection, src: Path, dst: Path, whole_image: bool = False, max_faces: int = DEFAULT_MAX_FACES,
    refine: int = 0, keep_metadata: bool = False, channel: ChannelSpec | None = None,
    min_success: float | None = None, stronger: Sequence[Callable[[], Protection]] = (),
) -> dict[str, Any]:
    """Load ``src``, protect its faces, write ``dst`` (PNG unless its suffix asks otherwise); return the report
    (a :class:`core.report.PhotoEntry`: ``name`` the file's name, as in the API, and ``input`` its path).

    A photo with no face is not written (``"output": None``) unless ``whole_image`` protects it whole. A JPEG
    or WebP ``dst`` is measured as delivered; ``keep_metadata`` writes the source's EXIF (GPS included).
    ``min_success``: the photo is protected again with each of ``stronger`` while its receipt falls short
    (:func:`protect_until`); if it never reaches it, it is not written and the entry's ``error`` says why.
    """
    fmt = SUFFIX_FORMATS.get(dst.suffix.lower(), "PNG")

    def run(prot: Protection, photos: Sequence[LoadedImage], attempt: int) -> list[Protected]:
        return protect_images(prot, photos, whole_image=whole_image, max_faces=max_faces,
                              refine=refine_rounds(refine, attempt),
                              output_format=fmt, keep_metadata=keep_metadata, channel=channel)

    [attempted] = protect_until(run, protection, [load_image(src)], min_success, stronger)
    result = attempted.result
    if result.report["protection"] == "no_face":
        return {"name": src.name, "input": str(src), "output": None, **result.report}
    if min_success is not None:
        error = record_min_success(result.report, min_success, attempted)
        if error is not None:
            return {"name": src.name, "input": str(src), "output": None, "error": error, **result.report}
    if result.encoded is not None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(result.encoded)
    else:
        save_image(result.x_adv, dst, alpha=result.image.alpha, icc_profile=result.image.icc_profile,
                   exif=result.image.exif if keep_metadata else None)
    return {"name": src.name, "input": str(src), "output": str(dst), **result.report}
