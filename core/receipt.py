"""The protection receipt: how well a delivered photo is protected, after what photos go through.

A protected photo rarely reaches a forger as delivered: platforms re-encode it as JPEG and resize it. The
receipt runs the forgers on the delivered photo clean and after each condition of
:mod:`core.transforms.conditions` (JPEG q90 and q75 and WebP q80 through Pillow, a 0.5x down-and-up resize, a
Gaussian blur, mild noise), applied to
the photo as a platform would (on a window around each face, equivalent to the whole photo there and
much cheaper for a large one), then crops the faces as an attacker would, and reports per condition
the defense success rate: the share of (face, edit) pairs whose edit of the protected photo differs from
the edit of the clean photo under the same condition by MSE > 0.05 (Ruiz et al. 2020), so the condition by
itself never counts as protection.

Example::

    r = photo_receipt(forgers, x, x_adv, frames, targets, size=128)
    r["conditions"]["jpeg75"]["success_rate"], r["min_success_rate"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from core.evaluate import CleanEdits, Judge, Tally, add_effect, clean_edits, effect_against, judges
from core.faces import Face, Frame, align_crop
from core.forgers import Forger
from core.image import quantize
from core.interrupt import checkpoint
from core.metrics import SUCCESS_THRESHOLD
from core.transforms.conditions import apply_condition

RECEIPT_CONDITIONS: tuple[str, ...] = ("clean", "jpeg90", "jpeg75", "webp80", "resize0.5", "blur1", "noise")
# The conditions in a user's words, for the verdict's sentence (the page labels its table in its own).
CONDITION_WORDS = {"clean": "as delivered", "jpeg90": "JPEG quality 90", "jpeg75": "JPEG quality 75",
                   "webp80": "WebP quality 80", "resize0.5": "a resize to half and back",
                   "blur1": "a slight blur", "noise": "mild noise"}
# A receipt's verdict: protected when at least this share of the edits is broken under every condition (the
# project's target), partly protected when a fifth of them are, as delivered or under every condition.
PROTECTED_AT = 0.8
PARTLY_AT = 0.2
# Conditions are applied to a window around each face rather than to a whole (12-megapixel) photo: a window
# starting on JPEG's 16 px 4:2:0 blocks is coded in the very blocks the whole photo is, and a margin keeps the
# face's square beyond the reach of the decoder's chroma upsampling and of the resize's kernels.
WINDOW_ALIGN = 16
WINDOW_MARGIN = 32


# A photo protected whole is seen by the forgers shrunk to their input; its conditions are applied to it at
# most this large (long side) rather than to all of its (up to 40 million) pixels, seven times over. Its
# perturbation was made at the forgers' resolution and upsampled, so nothing it holds is finer than this.
WHOLE_PHOTO_SIDE = 1024


def bounded(x: torch.Tensor, side: int) -> torch.Tensor:
    """``x`` downscaled (antialiased, 8-bit) so that its long side is at most ``side``; ``x`` itself if it is."""
    long = max(x.shape[-2:])
    if long <= side:
        return x
    k = side / long
    shape = (max(1, round(x.shape[-2] * k)), max(1, round(x.shape[-1] * k)))
    return quantize(F.interpolate(x, size=shape, mode="bilinear", antialias=True, align_corners=False))


def face_window(frame: Frame, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the face's square plus :data:`WINDOW_MARGIN`, its origin on the JPEG block grid."""
    x0, y0, x1, y1 = frame.bounds(width, height, margin=WINDOW_MARGIN) or (0, 0, width, height)
    x0, y0 = x0 // WINDOW_ALIGN * WINDOW_ALIGN, y0 // WINDOW_ALIGN * WINDOW_ALIGN
    x1 = min(width, -(-x1 // WINDOW_ALIGN) * WINDOW_ALIGN)
    y1 = min(height, -(-y1 // WINDOW_ALIGN) * WINDOW_ALIGN)
    return x0, y0, x1, y1


def conditioned_crops(
    condition: str, x: torch.Tensor, frames: Sequence[Face | Frame] | None, size: int
) -> torch.Tensor:
    """The attacker's crops of photo ``x`` after ``condition``, computed on a window around each face (a whole
    photo: on it downscaled to at most :data:`WHOLE_PHOTO_SIDE`)."""
    if not frames:
        return attacker_crops(apply_condition(condition, bounded(x, WHOLE_PHOTO_SIDE)), None, size)
    height, width = x.shape[-2:]
    out = []
    for face in frames:
        frame = face.frame() if isinstance(face, Face) else face
        x0, y0, x1, y1 = face_window(frame, width, height)
        local = Frame(frame.cx - x0, frame.cy - y0, frame.side, frame.angle)
        out.append(attacker_crops(apply_condition(condition, x[..., y0:y1, x0:x1]), [local], size))
    return torch.cat(out)


def attacker_crops(
    x: torch.Tensor, frames: Sequence[Face | Frame] | None, size: int
) -> torch.Tensor:
    """The crops a forger gets of a full photo: each face aligned (``frames``), or the photo resized whole."""
    if frames:
        return torch.cat([quantize(align_crop(x, f, size)) for f in frames])
    if x.shape[-2:] == (size, size):
        return x
    return quantize(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False))


def forger_numbers(tally: Tally, forgers: Sequence[Forger], condition: str = "clean") -> dict[str, dict[str, Any]]:
    """Per forger: mean success rate, distortion and nullification error held in ``tally``."""
    out: dict[str, dict[str, Any]] = {}
    for forger in forgers:
        key = f"{forger.name}/{condition}"
        out[forger.name] = {k: tally.mean(f"{key}/{k}")
                            for k in ("success_rate", "distortion", "nullification", "edit_blocked")}
    return out


def _mean_rate(numbers: dict[str, dict[str, Any]], key: str = "success_rate") -> float | None:
    rates = [v[key] for v in numbers.values() if v.get(key) is not None]
    return sum(rates) / len(rates) if rates else None


def _condition(numbers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"success_rate": _mean_rate(numbers), "edit_blocked": _mean_rate(numbers, "edit_blocked"),
            "forgers": numbers}


def references(
    forgers: Sequence[Forger], crops: torch.Tensor, targets: torch.Tensor, judge: Judge | None = None
) -> dict[str, CleanEdits]:
    """Per forger (by name): its edits of the clean crops, the reference of every condition's measurement."""
    return {f.name: clean_edits(f, crops, targets, judge if judges(judge, f) else None) for f in forgers}


def effect_tally(
    forgers: Sequence[Forger], refs: dict[str, CleanEdits], seen: torch.Tensor, judge: Judge | None = None
) -> Tally:
    """The forgers' effect on the protected crops ``seen`` against their clean edits ``refs`` (keyed
    ``<forger>/clean``, see :func:`forger_numbers`)."""
    tally = Tally()
    for forger in forgers:
        add_effect(tally, f"{forger.name}/clean",
                   effect_against(forger, refs[forger.name], seen, judge if judges(judge, forger) else None))
    return tally


@torch.no_grad()
def photo_receipt(
    forgers: Sequence[Forger],
    x: torch.Tensor,
    x_adv: torch.Tensor,
    frames: Sequence[Face | Frame] | None,
    targets: torch.Tensor,
    size: int,
    conditions: Sequence[str] = RECEIPT_CONDITIONS,
    measured: dict[str, dict[str, dict[str, Any]]] | None = None,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Per-condition success rates of ``forgers`` on a delivered photo.

    Args:
        forgers: the forgers to run (their names key the result).
        x, x_adv: ``(1, 3, H, W)`` clean and delivered photos in [-1, 1] on the 8-bit grid.
        frames: where the faces are (as re-detected on the delivered photo); None or empty: the whole photo
            resized to ``size`` is what the forgers see.
        targets: ``(F, T, A)`` the edits to try, per face (F = 1 for a whole photo).
        size: the forgers' input size.
        conditions: names from :func:`core.transforms.conditions.condition_names`.
        measured: per condition, the forgers' numbers already measured on these very crops (the report's own
            ``clean`` numbers): reused instead of running the forgers again.
        judge: the evaluation classifier: each condition then says which share of the edits that work on
            the clean photo fail or are ruined on the protected one (``edit_blocked``, see
            :func:`core.evaluate.edit_blocked`).

    Each condition is measured against the forgers' edits of the clean photo *after the same condition*: what
    the attacker would have got had the photo not been protected, since the platform re-encodes it either
    way. The edits of the unconditioned photo are no fair reference: a 0.5x resize or a blur alone moves the
    edit of a small face (upscaled to the forger's input) by more than the 0.05 that counts as defended, and
    JPEG q90 alone flips the judge's reading of an edit it barely reads.

    Returns:
        ``{"conditions": {name: {"success_rate", "edit_blocked", "forgers": {forger: {success_rate, distortion,
        nullification, edit_blocked}}}}, "min_success_rate", "min_edit_blocked", "weakest", "threshold"}``;
        ``min_success_rate`` is the lowest over the conditions and ``weakest`` the condition where it occurs.
    """
    if x.shape != x_adv.shape or x.shape[0] != 1:
        raise ValueError(f"expected two (1, 3, H, W) photos, got {tuple(x.shape)} and {tuple(x_adv.shape)}")
    crops = len(frames) if frames else 1
    if crops != targets.shape[0]:
        raise ValueError(f"{crops} crops but targets for {targets.shape[0]}")
    per: dict[str, dict[str, Any]] = {}
    if not frames:  # once, not per condition (see conditioned_crops)
        x, x_adv = bounded(x, WHOLE_PHOTO_SIDE), bounded(x_adv, WHOLE_PHOTO_SIDE)
    for cond in conditions:
        checkpoint()
        if measured and cond in measured:
            per[cond] = _condition(measured[cond])
            continue
        refs = references(forgers, conditioned_crops(cond, x, frames, size), targets, judge)
        # forger effect only: the photo's quality is measured once, by the report, not per condition
        seen = conditioned_crops(cond, x_adv, frames, size)
        per[cond] = _condition(forger_numbers(effect_tally(forgers, refs, seen, judge), forgers))
    known = {c: v["success_rate"] for c, v in per.items() if v["success_rate"] is not None}
    weakest = min(known, key=lambda c: known[c]) if known else None
    blocked = [v["edit_blocked"] for v in per.values() if v["edit_blocked"] is not None]
    return {
        "conditions": per,
        "min_success_rate": known[weakest] if weakest else None,
        "min_edit_blocked": min(blocked) if blocked else None,
        "weakest": weakest,
        "threshold": SUCCESS_THRESHOLD,
    }


def verdict(receipt: dict[str, Any]) -> dict[str, str]:
    """What a receipt means, in words a person protecting a photo will not misread: ``level`` (``protected``,
    ``partly`` or ``not_protected``, from the success rates: see :data:`PROTECTED_AT`; an edit changed past the
    threshold that the judge still reads as working does not count as protected) and ``text``, which also says
    how many of the edits that work on the original no longer do, where the judge measured it."""
    conditions = receipt["conditions"]
    clean = conditions.get("clean", {}).get("success_rate")
    worst, weakest = receipt.get("min_success_rate"), receipt.get("weakest")
    if worst is None:
        return {"level": "not_protected", "text": "Nothing could be measured: the forgers' edits were not tried."}
    rates = {r for c in conditions.values() if (r := c.get("success_rate")) is not None}
    if len(rates) == 1:
        broken = f"{_pct(worst)} of them broken, as delivered and after what platforms do to photos"
    elif weakest and weakest != "clean":
        after = CONDITION_WORDS.get(weakest, weakest)
        broken = f"{_pct(clean)} of them broken as delivered, {_pct(worst)} after {after}"
    else:
        broken = f"{_pct(clean)} of them broken as delivered, more after what platforms do to photos"
    judged = receipt.get("min_edit_blocked")
    still_work = judged is not None and judged < PROTECTED_AT
    if worst >= PROTECTED_AT and not still_work:
        level, text = "protected", (f"Protected against these editors: their edits of this photo come out "
                                    f"broken ({broken}).")
    elif worst >= PROTECTED_AT:  # changed past the threshold, yet the judge still reads many of them as working
        level, text = "partly", (f"Partly protected: these editors' edits of this photo come out changed "
                                 f"({broken}), but some of them still do what they were asked.")
    elif worst >= PARTLY_AT or (clean or 0.0) >= PARTLY_AT:
        level, text = "partly", (f"Partly protected: some of these editors' edits of this photo come out broken "
                                 f"({broken}); the others still work.")
    else:
        level, text = "not_protected", (f"Not protected against these editors: their edits of this photo still work "
                                        f"({broken}).")
    blocked = conditions.get("clean", {}).get("edit_blocked")
    if blocked is not None and judged is not None:
        text += (f" Of the edits that work on the original, {_pct(blocked)} fail or come out visibly ruined as "
                 f"delivered, {_pct(judged)} in the worst case.")
    if receipt.get("scope") == "whole_photo":
        text = "No face was found, so this is about the whole picture, not a face. " + text
    return {"level": level, "text": text}


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.0f} %"
