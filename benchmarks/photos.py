"""Real photos through Veil as a user sends them: seconds per photo, the receipt per condition, and the
quality of the face regions, for each method at its defaults.

Photos: the UTKFace photos in ``../shared/datasets/utkface/images`` (200x200, all ages and origins), CelebA
validation images as the 178x218 photos they are, scikit-image's astronaut (512 px, public domain) and two
larger photos built from it (2 MP and 12 MP). Datasets are read in place and never written out: the results
name dataset photos by set and index only, and the 400 % zoom PNG shows the astronaut alone.

    python benchmarks/photos.py --utkface 40 --celeba 20 --method pgd --method dwt-chroma
Writes ``benchmarks/results/photos-<name>.json`` and ``.md`` (and ``photos-<name>-zoom.png``), prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.channel import ChannelSpec
from core.data import default_celeba_dir, read_index
from core.forgers import compile_forger
from core.image import LoadedImage, load_image, quantize, save_image
from core.methods import parse_options
from core.protect import ROUND_TRIP_SAMPLES, build_protection, protect_images
from core.receipt import RECEIPT_CONDITIONS
from core.workflows import demo_image

RESULTS = Path(__file__).parent / "results"
UTKFACE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "utkface" / "images"


def _loaded(x: torch.Tensor) -> LoadedImage:
    return LoadedImage(tensor=x, alpha=None, format=None)


def _resized(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return quantize(F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False))


def photo_set(n_utk: int, n_celeba: int, large: bool) -> list[tuple[str, str, LoadedImage]]:
    """(set, id, photo): the astronaut first, then the datasets' photos (sorted by file name)."""
    astronaut = load_image(demo_image(Path("out/bench-photos")))
    out: list[tuple[str, str, LoadedImage]] = [("astronaut", "512px", astronaut)]
    if large:
        x = astronaut.tensor
        out.append(("astronaut", "2MP", _loaded(_resized(x, 1448, 1448))))
        big = _resized(x, 3000, 3000)  # 12 MP: the portrait at 3000 px, widened by mirroring its sides
        out.append(("astronaut", "12MP", _loaded(F.pad(big, (500, 500, 0, 0), mode="reflect"))))
    if UTKFACE.is_dir():
        for i, path in enumerate(sorted(UTKFACE.iterdir())[:n_utk]):
            out.append(("utkface", str(i), load_image(path)))
    root = default_celeba_dir()
    if n_celeba and (root / "list_attr_celeba.txt").is_file():
        for i, name in enumerate(read_index(root, "val").files[:n_celeba]):
            out.append(("celeba-val", str(i), load_image(root / "img_align_celeba" / name)))
    return out


def run_photo(protection: Any, image: LoadedImage, channel: ChannelSpec | None, refine: int = 0,
              samples: int = ROUND_TRIP_SAMPLES) -> tuple[dict[str, Any], torch.Tensor]:
    start = time.perf_counter()
    result = protect_images(protection, [image], channel=channel, refine=refine, samples=samples)[0]
    total = time.perf_counter() - start
    r = result.report
    receipt = r.get("receipt") or {}
    row = {
        "width": r["width"], "height": r["height"], "protection": r["protection"], "faces": len(r["faces"]),
        "seconds": round(total, 3), "report_seconds": round(r["report_seconds"], 3),
        "psnr": r["psnr"], "lpips": r["lpips"] if isinstance(r["lpips"], float) else None,
        "receipt": {c: v["success_rate"] for c, v in receipt.get("conditions", {}).items()},
        "min_success_rate": receipt.get("min_success_rate"),
        "edit_blocked": {c: v.get("edit_blocked") for c, v in receipt.get("conditions", {}).items()},
        "min_edit_blocked": receipt.get("min_edit_blocked"),
        # how far each condition is from defending (0.05 defends an edit): progress a rate of 0 % hides
        "distortion": {c: _mean_distortion(v) for c, v in receipt.get("conditions", {}).items()},
    }
    return row, result.x_adv


def _mean_distortion(condition: dict[str, Any]) -> float | None:
    values = [f["distortion"] for f in (condition.get("forgers") or {}).values() if f.get("distortion") is not None]
    return statistics.mean(values) if values else None


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    faces = [r for r in rows if r["protection"] == "faces"]
    out: dict[str, Any] = {"photos": len(rows), "with_faces": len(faces),
                           "no_face": sum(r["protection"] == "no_face" for r in rows)}
    for cond in RECEIPT_CONDITIONS:
        vals = [r["receipt"][cond] for r in faces if r["receipt"].get(cond) is not None]
        out[f"median_{cond}"] = _median(vals)
        out[f"mean_{cond}"] = statistics.mean(vals) if vals else None
    worst = [r["min_success_rate"] for r in faces if r["min_success_rate"] is not None]
    out["median_min_success"] = _median(worst)
    out["worst_decile_min_success"] = _pct(worst, 0.1)
    # whether the edits still work (the judge), where the results have it
    clean_blocked = [r.get("edit_blocked", {}).get("clean") for r in faces]
    min_blocked = [r.get("min_edit_blocked") for r in faces]
    out["median_edit_blocked_clean"] = _median([v for v in clean_blocked if v is not None])
    out["median_min_edit_blocked"] = _median([v for v in min_blocked if v is not None])
    dist = [r.get("distortion") or {} for r in faces]
    out["median_distortion_clean"] = _median([d["clean"] for d in dist if d.get("clean") is not None])
    lowest = [min(v for v in d.values() if v is not None) for d in dist if any(v is not None for v in d.values())]
    out["median_min_distortion"] = _median(lowest)
    for key in ("psnr", "lpips"):
        vals = [r[key] for r in faces if r[key] is not None]
        out[f"median_{key}"] = _median(vals)
    for label, test in (("512px", lambda r: r["width"] * r["height"] <= 512 * 512),
                        ("2MP", lambda r: 512 * 512 < r["width"] * r["height"] <= 3_000_000),
                        ("12MP", lambda r: r["width"] * r["height"] > 3_000_000)):
        secs = [r["seconds"] for r in rows if test(r) and r["protection"] == "faces"]
        out[f"median_seconds_{label}"] = _median(secs)
    # what verifying costs against protecting (the receipt, its re-detection and the quality metrics)
    shares = [r["report_seconds"] / (r["seconds"] - r["report_seconds"]) for r in faces
              if r.get("report_seconds") is not None and r["seconds"] > r["report_seconds"]]
    out["median_verify_share"] = _median(shares)
    return out


def zoom_pair(x: torch.Tensor, x_adv: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """The same 64 px square of the original and the protected photo, each at 400 % (nearest), side by side."""
    x0, y0, x1, y1 = box
    a = F.interpolate(x[..., y0:y1, x0:x1], scale_factor=4, mode="nearest")
    b = F.interpolate(x_adv[..., y0:y1, x0:x1], scale_factor=4, mode="nearest")
    gap = torch.ones_like(a[..., :8])
    return torch.cat([a, gap, b], dim=-1)


def write_markdown(path: Path, info: dict[str, Any], summaries: dict[str, dict[str, Any]]) -> None:
    conds = list(RECEIPT_CONDITIONS)
    weights = sorted({w for ws in info.get("weights", {}).values() for w in ws})
    lines = [f"# Photo benchmark ({', '.join(weights) or info['forgers']}, {info['photos']} photos)", "",
             f"Command: `{info['command']}`", "",
             f"Machine: {info['machine']}; torch threads {info['threads']}; load average (1 min) "
             f"{info['load_average_1min_start']} at the start, {info['load_average_1min_end']} at the end." +
             (f" Forgers compiled first (TorchInductor), seconds per method: {info['compile_seconds']}."
              if info.get("compile_seconds") else ""), "",
             "Receipt (share of the forgers' edits defeated) per condition over the photos with faces: median, "
             "and the mean in brackets; `worst 10 %`: the 10th percentile of each photo's lowest condition. "
             "`edit blocked`: of the edits that work on the clean face (the evaluation classifier reads their "
             "target clearly, by a logit of 1), the share that fail (read clearly away from it) or are visibly "
             "ruined on the protected one (median over photos, as delivered and at each photo's weakest "
             "condition; `-`: not measured). `distortion`: how far the edits "
             "of the protected faces move from those of the clean ones (MSE; 0.05 defends an edit), median over "
             "photos, as delivered and at each photo's weakest condition. `verify / protect`: the seconds of the "
             "report (re-detection, receipt, quality metrics) against those of the protection, median over "
             "photos.", "",
             "| method | faces/photos | " + " | ".join(conds) + " | median min | worst 10 % | edit blocked | "
             "edit blocked (min) | distortion | PSNR dB | LPIPS | s (512 px) | s (2 MP) | s (12 MP) | "
             "verify / protect |",
             "|---" * (len(conds) + 13) + "|"]

    def f(v: Any, pct: bool = False, digits: int = 1) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.0f} %" if pct else f"{v:.{digits}f}"

    for method, s in summaries.items():
        cells = [f"{f(s[f'median_{c}'], pct=True)} ({f(s[f'mean_{c}'], pct=True)})" for c in conds]
        lines.append(f"| {method} | {s['with_faces']}/{s['photos']} | " + " | ".join(cells) +
                     f" | {f(s['median_min_success'], pct=True)} | {f(s['worst_decile_min_success'], pct=True)} | "
                     f"{f(s.get('median_edit_blocked_clean'), pct=True)} | "
                     f"{f(s.get('median_min_edit_blocked'), pct=True)} | "
                     f"{f(s.get('median_distortion_clean'), digits=4)} / "
                     f"{f(s.get('median_min_distortion'), digits=4)} | "
                     f"{f(s['median_psnr'])} | {f(s['median_lpips'], digits=4)} | {f(s['median_seconds_512px'])} | "
                     f"{f(s['median_seconds_2MP'])} | {f(s['median_seconds_12MP'])} | "
                     f"{f(s.get('median_verify_share'), pct=True)} |")
    path.write_text("\n".join(lines) + "\n")


def rewrite_markdown(json_path: Path) -> None:
    """Summarise a result's photos again and re-render its Markdown (after a change of summary or layout)."""
    data = json.loads(json_path.read_text())
    data["summary"] = {m: summarize(rows) for m, rows in data["photos"].items()}
    json_path.write_text(json.dumps(data, indent=1))
    write_markdown(json_path.parent / f"{json_path.stem}.md", data["info"], data["summary"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", "-m", action="append",
                    help="methods, each with options after a colon: pgd-l2:eps=0.025,steps=30 (default: pgd)")
    ap.add_argument("--forger", action="append", help="forgers (default: stargan)")
    ap.add_argument("--weights", action="append",
                    help="weights of each --forger, in order (default: the shipped defaults)")
    ap.add_argument("--utkface", type=int, default=40)
    ap.add_argument("--celeba", type=int, default=20)
    ap.add_argument("--no-large", action="store_true", help="skip the 2 MP and 12 MP photos")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="compact64")
    ap.add_argument("--steps", type=int, default=None, help="iterative methods' steps (default: theirs)")
    ap.add_argument("--refine", type=int, default=0,
                    help="rounds re-protecting the framing a detector finds (results before it was an option: 1)")
    ap.add_argument("--at", choices=("forger", "photo"), default="forger",
                    help="protect faces at the forgers' resolution (round trip) or at the photo's (channel)")
    ap.add_argument("--eot", default=None,
                    help="random transforms iterative methods optimise through, e.g. identity,jpeg,resize,blur")
    ap.add_argument("--samples", type=int, default=None,
                    help="attacker framings (or channel draws) averaged per optimisation step (default: the "
                         "pipeline's, 1 for the round trip and 2 for the channel)")
    ap.add_argument("--compile", action="store_true",
                    help="compile the forgers first, as a worker with VEIL_WORKER_COMPILE_FORGERS does (the "
                         "seconds it takes are recorded, not counted in any photo's)")
    args = ap.parse_args()
    if args.samples is None:
        args.samples = ChannelSpec.samples if args.at == "photo" else ROUND_TRIP_SAMPLES
    torch.set_num_threads(args.threads)
    methods = args.method or ["pgd"]
    forgers = args.forger or ["stargan"]
    photos = photo_set(args.utkface, args.celeba, not args.no_large)
    info: dict[str, Any] = {
        "command": "python benchmarks/photos.py " + " ".join(
            [*(f"-m {m}" for m in methods), f"--utkface {args.utkface}", f"--celeba {args.celeba}",
             *(["--no-large"] if args.no_large else []), *(f"--weights {w}" for w in args.weights or []),
             f"--threads {args.threads}", f"--name {args.name}",
             f"--at {args.at}", *([f"--steps {args.steps}"] if args.steps else []),
             f"--refine {args.refine}", f"--samples {args.samples}", *([f"--eot {args.eot}"] if args.eot else []),
             *(["--compile"] if args.compile else [])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": args.threads, "refine": args.refine,
        "samples": args.samples, "eot": args.eot,
        "forgers": ", ".join(forgers), "photos": len(photos), "at": args.at, "conditions": list(RECEIPT_CONDITIONS),
        "load_average_1min_start": round(os.getloadavg()[0], 2),
    }
    rows: dict[str, list[dict[str, Any]]] = {}
    zooms = []
    for method in methods:
        name, _, options = method.partition(":")
        protection = build_protection(name, forgers, dict(zip(forgers, args.weights or [], strict=False)), eot=args.eot,
                                      **{"steps": args.steps, **parse_options(options.split(",") if options else [])})
        info.setdefault("weights", {})[method] = [Path(f.source).stem for f in protection.forgers]
        if args.compile:
            info.setdefault("compile_seconds", {})[method] = round(sum(map(compile_forger, protection.forgers)), 1)
        rows[method] = []
        for kind, ident, image in photos:
            channel = ChannelSpec(samples=args.samples) if args.at == "photo" else None
            row, x_adv = run_photo(protection, image, channel, args.refine, args.samples)
            rows[method].append({"set": kind, "id": ident, **row})
            print(f"{method:12s} {kind:10s} {ident:5s} {row['protection']:10s} {row['seconds']:6.2f} s "
                  f"min {row['min_success_rate']} {row['receipt']}", flush=True)
            if kind == "astronaut" and ident == "512px":
                zooms.append(zoom_pair(image.tensor, x_adv, (216, 80, 280, 144)))  # the eyes and brows
    info["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    summaries = {m: summarize(r) for m, r in rows.items()}
    for m, s in summaries.items():
        print(m, json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()}))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"photos-{args.name}"  # a name may hold dots (eps0.1): no with_suffix
    data = {"info": info, "summary": summaries, "photos": rows}
    (stem.parent / f"{stem.name}.json").write_text(json.dumps(data, indent=1))
    write_markdown(stem.parent / f"{stem.name}.md", info, summaries)
    if zooms:
        save_image(torch.cat(zooms, dim=-2), stem.parent / f"{stem.name}-zoom.png")
    print(f"wrote {stem}.json, .md")


if __name__ == "__main__":
    main()
