"""How far a protection made at the photo's resolution survives a detector framing the face at another scale.

For each photo, PGD (stargan, its default budget) is run at the photo's resolution through the attacker's
channel with no platform step and only a framing error: none, the measured MTCNN-vs-Haar spread on CelebA
(log-scale sigma 0.07), or a wider one (0.12, about the UTKFace gap). The protected photo is then cropped at
the protection's own framing scaled by 0.8 ... 1.25 (a detector framing the face larger or smaller), and the
forger's edits of those crops are compared with its edits of the same crops of the clean photo: the
distortion (MSE between the edits) against the 0.05 threshold of a defended edit, and the success rate.

    python benchmarks/framing_robustness.py --utkface 2 --steps 60
    python benchmarks/framing_robustness.py --crop-space --faces 4    # the same question on aligned crops
    python benchmarks/framing_robustness.py --round-trip --utkface 2   # the default path, per framing model

Writes ``benchmarks/results/framing-robustness.json`` and ``.md``; prints a table. ``--crop-space`` asks it
without the photo: PGD on aligned 64 px CelebA crops, the perturbation at the crop's resolution or made at a
coarser one and upsampled (``--resolution``), optimised over a zoom of the crop (uniform in log-scale,
+-``--spread``) or not, measured at each zoom (``framing-robustness-crops.json`` / ``.md``).
``--round-trip`` asks it of the default path (a crop at the forger's size optimised through the paste back and
an attacker's new crop, :class:`core.faces.RoundTrip`) against the shipped forger, once per model of the
attacker's framing (none, zoom only, centre and angle only, both: the default), measured at the scaled framings
and at the faces as MTCNN and the Haar cascades find them again on the protected photo
(``framing-round-trip.json`` / ``.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.channel import IDENTITY, Framing
from core.evaluate import measure
from core.faces import PHOTO_FRAMING, Frame
from core.image import load_image
from core.metrics import psnr
from core.protect import attacker_frames, build_protection, detect, perturb, protect_images, work_size
from core.receipt import attacker_crops, forger_numbers
from core.workflows import demo_image

RESULTS = Path(__file__).parent / "results"
UTKFACE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "utkface" / "images"
SPREADS = (0.0, 0.07, 0.12)  # EOT log-scale sigma; 0: no framing error at all
SCALES = (0.8, 0.9, 1.0, 1.1, 1.25)


def zoom(x: torch.Tensor, z: float) -> torch.Tensor:
    """The centred square of side 1/z of each crop, resampled to the crop's size (z > 1 zooms in)."""
    theta = torch.tensor([[1 / z, 0, 0], [0, 1 / z, 0]], dtype=x.dtype)[None].expand(x.shape[0], -1, -1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# The forger these tables were measured against (its 64 px crops): the 64 px StarGAN, not the current default.
WEIGHTS = "stargan-compact64"


def crop_space(n_faces: int, steps: int, resolutions: tuple[int, ...] = (64, 16),
               spreads: tuple[float, ...] = (0.0, 0.1)) -> None:
    from core.data import default_celeba_dir
    from core.methods import expand_targets
    from core.targets import targets_for
    from core.workflows import load_faces

    faces, attrs, _ = load_faces(default_celeba_dir(), n_faces, 64)
    protection = build_protection("pgd", ("stargan",), {"stargan": WEIGHTS})
    forger, eps = protection.forgers[0], protection.eps
    targets = targets_for(faces, protection.attributes, attrs)
    xs, cs = expand_targets(faces, targets)
    with torch.no_grad():
        refs = {z: forger(zoom(xs, z), cs) for z in SCALES}
    rows = []
    for res in resolutions:
        for spread in spreads:
            gen = torch.Generator().manual_seed(0)
            d = (torch.rand(faces.shape[0], 3, res, res, generator=gen) * 2 - 1) * eps
            velocity = torch.zeros_like(d)

            def lift(d: torch.Tensor, res: int = res) -> torch.Tensor:
                up = d if res == 64 else F.interpolate(d, size=(64, 64), mode="bilinear", align_corners=False)
                return expand_targets((faces + up).clamp(-1, 1), targets)[0]

            for _ in range(steps):  # MI-FGSM, two zoom draws a step when spread
                d.requires_grad_(True)
                loss = torch.zeros(())
                for _ in range(2 if spread else 1):
                    z = float(torch.exp(torch.empty(1).uniform_(-spread, spread, generator=gen))) if spread else 1.0
                    with torch.no_grad():
                        ref = forger(zoom(xs, z), cs)
                    loss = loss + (forger(zoom(lift(d), z), cs) - ref).pow(2).mean()
                (grad,) = torch.autograd.grad(loss, d)
                velocity = 0.9 * velocity + grad / grad.abs().mean().clamp(min=1e-12)
                d = (d.detach() + eps / 8 * velocity.sign()).clamp(-eps, eps)
            row: dict[str, Any] = {"resolution": res, "spread": spread}
            with torch.no_grad():
                for z in SCALES:
                    per = (forger(zoom(lift(d), z), cs) - refs[z]).pow(2).flatten(1).mean(1)
                    row[f"x{z}"] = {"distortion": float(per.mean()), "success_rate": float((per > 0.05).float().mean())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    flags = "".join(f" --resolution {r}" for r in resolutions) + "".join(f" --spread {s}" for s in spreads)
    info = {"command": f"python benchmarks/framing_robustness.py --crop-space --faces {n_faces} --steps {steps}{flags}",
            "faces": n_faces, "targets_per_face": targets.shape[1], "load_average_1min": round(os.getloadavg()[0], 2)}
    (RESULTS / "framing-robustness-crops.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    lines = [f"# Framing robustness on aligned crops (PGD, {WEIGHTS}, 64 px CelebA validation faces)", "",
             f"Command: `{info['command']}`. Distortion of the edits of the zoomed protected crops against the edits "
             "of the equally zoomed clean crops (0.05: a defended edit), success rate in brackets.", "",
             "| perturbation made at | zoom spread optimised | " + " | ".join(f"x{s}" for s in SCALES) + " |",
             "|---" * (len(SCALES) + 2) + "|"]
    for r in rows:
        cells = [f"{r[f'x{s}']['distortion']:.3f} ({100 * r[f'x{s}']['success_rate']:.0f} %)" for s in SCALES]
        lines.append(f"| {r['resolution']} px | +-{r['spread']} | " + " | ".join(cells) + " |")
    (RESULTS / "framing-robustness-crops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


ROUND_TRIP_FRAMINGS: tuple[tuple[str, Framing | None], ...] = (
    ("none", None),
    ("zoom +-0.25 only", Framing(shift=0.0, angle=0.0)),
    ("centre 1 %, angle 2 deg only", Framing(scale_span=0.0)),
    ("both (the default)", PHOTO_FRAMING),
)


def _distortion(protection: Any, x: torch.Tensor, x_adv: torch.Tensor, frame: Frame, targets: torch.Tensor
                ) -> dict[str, float]:
    """The first forger's distortion and success rate on the face cropped at ``frame`` of both photos."""
    size = work_size(protection)
    tally = measure(attacker_crops(x, [frame], size), attacker_crops(x_adv, [frame], size), targets,
                    protection.forgers, ("clean",), quality=False)
    n = forger_numbers(tally, protection.forgers)[protection.forgers[0].name]
    return {"distortion": n["distortion"], "success_rate": n["success_rate"]}


def round_trip(n_utkface: int, steps: int, threads: int, budgets: tuple[float, ...] = ()) -> None:
    """The default path's perturbation, optimised per model of the attacker's framing, seen at other framings;
    then with the default framing at each larger L-inf budget of ``budgets``."""
    import math

    files = [demo_image(Path("out/bench-photos"))]
    if UTKFACE.is_dir():
        files += sorted(UTKFACE.iterdir())[1 : 1 + n_utkface]
    default = build_protection("pgd", ("stargan",), steps=steps)
    weights = Path(default.forgers[0].source).stem
    runs = [(label, framing, default) for label, framing in ROUND_TRIP_FRAMINGS]
    runs += [(f"the default, eps {eps:g}", PHOTO_FRAMING, build_protection("pgd", ("stargan",), steps=steps, eps=eps))
             for eps in budgets]
    load = [round(os.getloadavg()[0], 2)]
    rows: list[dict[str, Any]] = []
    for label, framing, protection in runs:
        for i, path in enumerate(files):
            [d] = detect(protection, [load_image(path)], max_faces=1)
            if not d.faces or d.targets is None:
                continue
            start = time.perf_counter()
            [p] = perturb(protection, [d], refine=0, framing=framing)
            row: dict[str, Any] = {"framing": label, "photo": "astronaut" if i == 0 else f"utkface {i}",
                                   "eps": protection.eps, "seconds": round(time.perf_counter() - start, 1),
                                   "psnr": round(float(psnr(d.x, p.x_adv)), 2)}
            ours = d.faces[0].frame()
            for scale in SCALES:
                seen = Frame(ours.cx, ours.cy, ours.side * scale, ours.angle)
                row[f"x{scale}"] = _distortion(protection, d.x, p.x_adv, seen, d.targets[:1])
            for detector in ("mtcnn", "haar"):
                [found], [matched] = attacker_frames(p.x_adv, d.faces, detector, 1)
                f = found.frame()
                row[detector] = {**_distortion(protection, d.x, p.x_adv, f, d.targets[:1]), "matched": matched,
                                 "log_scale": round(math.log(f.side / ours.side), 3),
                                 "shift": round(math.hypot(f.cx - ours.cx, f.cy - ours.cy) / ours.side, 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    load.append(round(os.getloadavg()[0], 2))
    info = {"command": f"python benchmarks/framing_robustness.py --round-trip --utkface {n_utkface} --steps {steps} "
                       f"--threads {threads}" + "".join(f" --eps {e:g}" for e in budgets), "weights": weights,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average_1min": load,
            "method": default.describe()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "framing-round-trip.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    columns = [f"x{s}" for s in SCALES] + ["mtcnn", "haar"]
    lines = [f"# Framing robustness of the default path (pgd, {steps} steps, against {weights})", "",
             f"Command: `{info['command']}`; {info['machine']}; load average {load[0]} -> {load[1]}.", "",
             "Mean over the photos of the distortion MSE(G(crop of protected), G(crop of clean)) with the face cropped "
             "at the protection's framing scaled by the column's factor, or as MTCNN or the Haar cascades find it "
             "again on the protected photo (0.05: the threshold of a defended edit); mean success rate in brackets. "
             "Rows: what the optimisation modelled of the attacker's framing.", "",
             "| attacker framing optimised over | " + " | ".join(columns) + " | PSNR dB (photo) | s/photo |",
             "|---" * (len(columns) + 3) + "|"]
    for label, _, _ in runs:
        sel = [r for r in rows if r["framing"] == label]
        if not sel:
            continue
        cells = [f"{statistics.mean(r[c]['distortion'] for r in sel):.3f} "
                 f"({100 * statistics.mean(r[c]['success_rate'] for r in sel):.0f} %)" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {statistics.mean(r['psnr'] for r in sel):.1f} | "
                     f"{statistics.median(r['seconds'] for r in sel):.0f} |")
    scale_gap = [r[d]["log_scale"] for r in rows for d in ("mtcnn", "haar")]
    lines += ["", f"Re-detected framing against ours: log-scale {min(scale_gap):+.3f} to {max(scale_gap):+.3f}."]
    (RESULTS / "framing-round-trip.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utkface", type=int, default=2, help="UTKFace photos besides the astronaut")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--samples", type=int, default=3, help="channel draws per step")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crop-space", action="store_true", help="on aligned CelebA crops instead of photos")
    ap.add_argument("--faces", type=int, default=4, help="with --crop-space: validation faces")
    ap.add_argument("--resolution", type=int, action="append", help="with --crop-space: perturbation sizes")
    ap.add_argument("--spread", type=float, action="append", help="with --crop-space: zoom spreads")
    ap.add_argument("--eps", type=float, action="append", help="with --round-trip: larger budgets to try")
    ap.add_argument("--round-trip", action="store_true",
                    help="the default path (crop through the round trip) against the shipped forger")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.round_trip:
        round_trip(args.utkface, args.steps, args.threads, tuple(args.eps or ()))
        return
    if args.crop_space:
        crop_space(args.faces, args.steps, tuple(args.resolution or (64, 16)), tuple(args.spread or (0.0, 0.1)))
        return
    files = [demo_image(Path("out/bench-photos"))]
    if UTKFACE.is_dir():
        files += sorted(UTKFACE.iterdir())[1 : 1 + args.utkface]
    protection = build_protection("pgd", ("stargan",), {"stargan": WEIGHTS}, steps=args.steps)
    load = [round(os.getloadavg()[0], 2)]
    rows: list[dict[str, Any]] = []
    for spread in SPREADS:
        framing = Framing(shift=0.02 if spread else 0.0, log_scale=spread, angle=2.0 if spread else 0.0, scale_span=0.0)
        spec = dataclasses.replace(IDENTITY, framing=framing if spread else None, samples=args.samples if spread else 1)
        for i, path in enumerate(files):
            image = load_image(path)
            start = time.perf_counter()
            result = protect_images(protection, [image], channel=spec, verify=False)[0]
            if not result.faces or result.targets is None:
                continue
            frame = result.faces[0].frame()
            row: dict[str, Any] = {"spread": spread, "photo": "astronaut" if i == 0 else f"utkface {i}",
                                   "seconds": round(time.perf_counter() - start, 1)}
            for scale in SCALES:
                seen = Frame(frame.cx, frame.cy, frame.side * scale, frame.angle)
                row[f"x{scale}"] = _distortion(protection, image.tensor, result.x_adv, seen, result.targets[:1])
            rows.append(row)
            print(json.dumps(row), flush=True)
    load.append(round(os.getloadavg()[0], 2))
    info = {"command": f"python benchmarks/framing_robustness.py --utkface {args.utkface} --steps {args.steps} "
                       f"--samples {args.samples} --threads {args.threads}",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average_1min": load,
            "method": protection.describe()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "framing-robustness.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    lines = [f"# Framing robustness (PGD at the photo's resolution, {WEIGHTS})", "",
             f"Command: `{info['command']}`; {info['machine']}; load average {load[0]} -> {load[1]}.", "",
             "Mean over the photos of the distortion MSE(G(crop of protected), G(crop of clean)) when the face is "
             "cropped at the protection's framing scaled by the column's factor (0.05: the threshold of a defended "
             "edit), and the mean success rate in brackets.", "",
             "| EOT log-scale sigma | " + " | ".join(f"x{s}" for s in SCALES) + " | s/photo |",
             "|---" * (len(SCALES) + 2) + "|"]
    for spread in SPREADS:
        sel = [r for r in rows if r["spread"] == spread]
        if not sel:
            continue
        cells = [f"{statistics.mean(r[f'x{s}']['distortion'] for r in sel):.3f} "
                 f"({100 * statistics.mean(r[f'x{s}']['success_rate'] for r in sel):.0f} %)" for s in SCALES]
        lines.append(f"| {spread} | " + " | ".join(cells) + f" | {statistics.median(r['seconds'] for r in sel):.0f} |")
    (RESULTS / "framing-robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
