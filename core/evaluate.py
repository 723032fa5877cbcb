"""Measuring a protection: imperceptibility (PSNR, SSIM, LPIPS of x vs x_adv) and effect on the forgers
(MSE of edits, defense success rate, nullification error) under channel conditions (JPEG, resize, blur).

Conventions (see the reference papers): images in [-1, 1]; x_adv is measured as delivered (8-bit);
a (face, target) pair is defended when MSE(G(T(x_adv), c), G(T(x), c)) > 0.05, with T the condition
(the reference is the forger's edit of the equally transformed clean face, so the condition alone never
counts as a success).

That success rate (DSR) counts an edit as defended when it merely *changed*: a blond edit that still turns
the hair blond, only noisier, passes 0.05. With a judge (the evaluation classifier, never a training
signal) each pair is also checked for whether the edit still works (:func:`edit_blocked`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core import metrics
from core.forgers import Forger
from core.methods import Protection, expand_targets
from core.targets import targets_for
from core.transforms import apply_condition

PSNR_CAP = 100.0  # dB: identical images (PSNR = inf) are averaged as this


def _lpips_or_none(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor | None:
    if not metrics.lpips_available() or min(a.shape[-2:]) < metrics.lpips_min_side():
        return None
    return metrics.lpips(a, b)


Judge = Callable[[torch.Tensor], torch.Tensor]  # faces in [-1, 1] -> attribute logits (N, A)
# How clearly the judge must read an attribute (logits; p 0.73 / 0.27) for an edit to count as working on the
# clean face or as failing on the protected one. A quarter of the 128 px StarGAN's edits are read at logits
# between 0 and 1: with no margin any nudge, a protection's or JPEG's, flips such an edit across the boundary
# and counts it as blocked although it looks the same (seen on `retentive`'s astronaut: 0.47 -> -0.1).
JUDGE_MARGIN = 1.0


def edited_attributes(judge: Judge, xs: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
    """(N, A) bool: the attributes each edit sets, against what the judge reads on the unedited faces.

    An edit to blond hair also clears black hair; the attribute it *sets* (blond) is what it is checked
    on. An edit that only clears one (to female, to old) is checked on that one."""
    changed = (judge(xs) > 0) != cs.bool()
    set_on = changed & cs.bool()
    return torch.where(set_on.any(dim=1, keepdim=True), set_on, changed)


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class CleanEdits:
    """A forger's edits of clean faces: what its edits of the protected faces are measured against.

    Tensors are per (face, edit) pair, face-major (see :func:`core.methods.expand_targets`); with a judge,
    ``counted`` says which edits work on the clean face (:func:`edit_blocked`) and ``own`` is each edit's
    LPIPS distance to its face (None without LPIPS's weights)."""

    faces: torch.Tensor
    targets: torch.Tensor
    edits: torch.Tensor
    per_face: int
    edited: torch.Tensor | None = None
    counted: torch.Tensor | None = None
    own: torch.Tensor | None = None

    def face(self, i: int) -> CleanEdits:
        """The pairs of the ``i``-th face only."""
        rows = slice(i * self.per_face, (i + 1) * self.per_face)

        def cut(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return CleanEdits(self.faces[rows], self.targets[rows], self.edits[rows], self.per_face,
                          cut(self.edited), cut(self.counted), cut(self.own))


def _toward_target(judge: Judge, out: torch.Tensor, cs: torch.Tensor) -> torch.Tensor:
    """(N, A) the judge's logits of ``out`` signed toward the targets ``cs``: positive where it reads the target."""
    return judge(out) * (2 * cs - 1)


def _reached(judge: Judge, out: torch.Tensor, cs: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the judge clearly reads every edited attribute of ``out`` at its target value."""
    hit = (_toward_target(judge, out, cs) >= JUDGE_MARGIN) | ~edited
    return hit.all(dim=1)


def _missed(judge: Judge, out: torch.Tensor, cs: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the judge clearly reads some edited attribute of ``out`` away from its target value."""
    return ((_toward_target(judge, out, cs) <= -JUDGE_MARGIN) & edited).any(dim=1)


@torch.no_grad()
def clean_edits(forger: Forger, x: torch.Tensor, targets: torch.Tensor, judge: Judge | None = None) -> CleanEdits:
    """The forger's edits of clean faces ``x`` (``(N, 3, H, W)``) to ``targets`` (``(N, T, A)``), and with a
    ``judge`` which of them work."""
    xs, cs = expand_targets(x, targets)
    out = forger(xs, cs)
    if judge is None:
        return CleanEdits(xs, cs, out, targets.shape[1])
    edited = edited_attributes(judge, xs, cs)
    counted = edited.any(dim=1) & _reached(judge, out, cs, edited)
    return CleanEdits(xs, cs, out, targets.shape[1], edited, counted, _lpips_or_none(out, xs))


@torch.no_grad()
def blocked_edits(judge: Judge, ref: CleanEdits, out_adv: torch.Tensor) -> torch.Tensor:
    """(N,) bool per pair: the edit of the protected face fails (the judge clearly reads an edited attribute
    away from its target, by :data:`JUDGE_MARGIN`) or is visibly ruined (its LPIPS distance to the clean edit
    exceeds the clean edit's own distance to the face)."""
    assert ref.edited is not None, "clean edits measured without a judge"
    fails = _missed(judge, out_adv, ref.targets, ref.edited)
    if ref.own is None:
        return fails
    far = _lpips_or_none(out_adv, ref.edits)
    assert far is not None
    return fails | (far > ref.own)


@torch.no_grad()
def edit_blocked(
    judge: Judge, xs: torch.Tensor, cs: torch.Tensor, out_clean: torch.Tensor, out_adv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (face, edit) pair: (counted, blocked), two (N,) bools.

    A pair is *counted* when the forger's edit of the clean face works: the judge reads every edited
    attribute (:func:`edited_attributes`) at its target value, clearly (by :data:`JUDGE_MARGIN`). It is
    *blocked* when the edit of the protected face fails (the judge clearly reads an edited attribute away from
    its target: an edit merely nudged across the boundary is not blocked) or is visibly ruined: its LPIPS
    distance to the clean edit exceeds the clean edit's own distance to the face, i.e. the protection changed
    the picture more than the edit did. Without LPIPS's weights only the judge decides.
    """
    edited = edited_attributes(judge, xs, cs)
    counted = edited.any(dim=1) & _reached(judge, out_clean, cs, edited)
    ref = CleanEdits(xs, cs, out_clean, 1, edited, counted, _lpips_or_none(out_clean, xs))
    return counted, blocked_edits(judge, ref, out_adv)


@torch.no_grad()
def effect_against(
    forger: Forger, ref: CleanEdits, x_adv: torch.Tensor, judge: Judge | None = None
) -> dict[str, torch.Tensor]:
    """Per pair of ``ref``: the forger's edits of protected faces ``x_adv`` (in ``ref``'s order, possibly after
    a condition) against its clean edits: distortion, success flag, nullification error (against the clean
    face), the clean edit's strength, and with a ``judge`` ``edit_blocked`` over the pairs whose clean edit
    works."""
    xas = x_adv.repeat_interleave(ref.per_face, dim=0)
    out_adv = forger(xas, ref.targets)
    out = {
        "distortion": metrics.mse(out_adv, ref.edits),
        "defended": metrics.defended(out_adv, ref.edits),
        "nullification": metrics.nullification_error(out_adv, ref.faces),
        "edit_strength": metrics.mse(ref.edits, ref.faces),
    }
    if judge is not None and ref.counted is not None:
        out["edit_blocked"] = blocked_edits(judge, ref, out_adv)[ref.counted]
    return out


def forger_effect(
    forger: Forger, x: torch.Tensor, x_adv: torch.Tensor, targets: torch.Tensor, condition: str = "clean",
    judge: Judge | None = None,
) -> dict[str, torch.Tensor]:
    """Per (face, target) pair: edit distortion, success flag and nullification error, flattened (N*T,);
    with a ``judge``, ``edit_blocked`` over the pairs whose clean edit works (see :func:`edit_blocked`).
    Both faces go through ``condition``: the reference is the edit of the equally transformed clean face."""
    ref = clean_edits(forger, apply_condition(condition, x), targets, judge)
    return effect_against(forger, ref, apply_condition(condition, x_adv), judge)


@dataclass
class Tally:
    """Running sums over faces, so an evaluation streams in batches with flat memory."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    maxes: dict[str, float] = field(default_factory=dict)

    def track_max(self, key: str, values: torch.Tensor) -> None:
        self.maxes[key] = max(self.maxes.get(key, float("-inf")), float(values.max()))

    def add(self, key: str, values: torch.Tensor | float, count: int | None = None) -> None:
        if isinstance(values, torch.Tensor):
            values = values.detach().float()
            if torch.isnan(values).any():
                # A NaN would silently count as "not defended"; a broken method or forger must be loud.
                raise FloatingPointError(f"NaN in {key}")
            self.sums[key] = self.sums.get(key, 0.0) + float(values.sum())
            self.counts[key] = self.counts.get(key, 0) + int(values.numel())
        else:
            self.sums[key] = self.sums.get(key, 0.0) + float(values)
            self.counts[key] = self.counts.get(key, 0) + (count if count is not None else 1)

    def merge(self, other: Tally) -> Tally:
        """Add another tally's sums, counts and maxima to this one (e.g. per-face tallies into a photo's)."""
        for key, value in other.sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + other.counts[key]
        for key, value in other.maxes.items():
            self.maxes[key] = max(self.maxes.get(key, float("-inf")), value)
        return self

    def mean(self, key: str) -> float | None:
        n = self.counts.get(key, 0)
        return self.sums[key] / n if n else None


def measure_batch(
    protection: Protection,
    x: torch.Tensor,
    c_org: torch.Tensor | None = None,
    forgers: Sequence[Forger] | None = None,
    conditions: Sequence[str] = ("clean",),
    tally: Tally | None = None,
    judge: Judge | None = None,
) -> tuple[torch.Tensor, Tally]:
    """Protect one batch and add its measurements to ``tally``; returns (x_adv, tally)."""
    tally = tally or Tally()
    targets = targets_for(x, protection.attributes, c_org)
    start = time.perf_counter()
    x_adv = protection(x, targets=targets)
    tally.add("seconds_per_face", time.perf_counter() - start, count=x.shape[0])
    measure(x, x_adv, targets, forgers if forgers is not None else protection.forgers, conditions, tally, judge=judge)
    return x_adv, tally


def measure(
    x: torch.Tensor,
    x_adv: torch.Tensor,
    targets: torch.Tensor,
    forgers: Sequence[Forger],
    conditions: Sequence[str] = ("clean",),
    tally: Tally | None = None,
    quality: bool = True,
    judge: Judge | None = None,
) -> Tally:
    """Add imperceptibility (unless ``quality`` is False) and per forger x condition effect of a delivered
    x_adv to ``tally`` (with a ``judge``: whether the edits still work)."""
    tally = tally or Tally()
    tally.add("faces", float(x.shape[0]), count=x.shape[0])
    if quality:
        _add_quality(tally, x, x_adv)
    for forger in forgers:
        for cond in conditions:
            add_effect(tally, f"{forger.name}/{cond}",
                       forger_effect(forger, x, x_adv, targets, cond, judge if judges(judge, forger) else None))
    return tally


def add_effect(tally: Tally, key: str, effect: dict[str, torch.Tensor]) -> None:
    """Add one forger's effect under one condition (:func:`effect_against`) to ``tally`` under ``key``."""
    if "edit_blocked" in effect:
        tally.add(f"{key}/edit_blocked", effect["edit_blocked"].float())
    tally.add(f"{key}/distortion", effect["distortion"])
    tally.add(f"{key}/success_rate", effect["defended"].float())
    tally.add(f"{key}/nullification", effect["nullification"])
    tally.add(f"{key}/edit_strength", effect["edit_strength"])


def judges(judge: Judge | None, forger: Forger) -> bool:
    """A judge reads the forger's attributes, in its order (else its logits would be misread)."""
    return judge is not None and tuple(getattr(judge, "attributes", ())) == tuple(forger.attributes)


def _add_quality(tally: Tally, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    tally.add("psnr", metrics.psnr(x_adv, x).clamp(max=PSNR_CAP))
    tally.add("ssim", metrics.ssim(x_adv, x))
    tally.track_max("linf", (x_adv - x).abs().flatten(1).amax(1))
    lp = _lpips_or_none(x_adv, x)
    if lp is not None:
        tally.add("lpips", lp)


def summarize(
    tally: Tally, protection: Protection, forgers: Sequence[Forger], conditions: Sequence[str]
) -> dict[str, Any]:
    """A JSON-able summary: one row per forger x condition, plus the imperceptibility numbers."""
    def num(key: str) -> float | None:
        v = tally.mean(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    rows = []
    for forger in forgers:
        for cond in conditions:
            key = f"{forger.name}/{cond}"
            rows.append({
                "method": protection.name,
                "forger": forger.name,
                "weights": Path(forger.source).stem,  # which of the forger's weights (its default changes)
                "condition": cond,
                "success_rate": num(f"{key}/success_rate"),
                "distortion": num(f"{key}/distortion"),
                "nullification": num(f"{key}/nullification"),
                "edit_strength": num(f"{key}/edit_strength"),
                "edit_blocked": num(f"{key}/edit_blocked"),
            })
    return {
        "method": protection.describe(),
        "faces": tally.counts.get("faces", 0),
        "psnr": num("psnr"),
        "ssim": num("ssim"),
        "lpips": num("lpips") if "lpips" in tally.counts else "unavailable",
        "linf_max": tally.maxes.get("linf"),
        "seconds_per_face": num("seconds_per_face"),
        "rows": rows,
    }


def markdown_table(summaries: Sequence[dict[str, Any]]) -> str:
    """One Markdown table over several summaries (method x forger x condition)."""
    head = ("| method | forger | condition | DSR | edit blocked | MSE(G(x_adv),G(x)) | null. err | PSNR | SSIM | LPIPS "
            "| s/face |")
    lines = [head, "|" + "---|" * 11]
    for s in summaries:
        lp = s["lpips"]
        lp_txt = f"{lp:.4f}" if isinstance(lp, float) else str(lp)
        targeted = s["method"].get("forgers", [])
        for r in s["rows"]:
            forger = r["forger"] if r["forger"] in targeted else f"{r['forger']} (transfer)"
            lines.append(
                f"| {r['method']} | {forger} | {r['condition']} | {_pct(r['success_rate'])} | "
                f"{_pct(r.get('edit_blocked'))} | "
                f"{_f(r['distortion'])} | {_f(r['nullification'])} | {_f(s['psnr'], 2)} | {_f(s['ssim'])} | "
                f"{lp_txt} | {_f(s['seconds_per_face'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def _f(v: float | None, digits: int = 4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"
