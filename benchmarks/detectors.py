"""How face detectors disagree on the framing of the same face: Haar (core.faces) against MTCNN
(core.detectors.mtcnn) and, where MediaPipe is installed, BlazeFace, and each against itself after an
imperceptible perturbation.

Each detected face becomes the CelebA-style square the forgers are cropped with (``Face.frame()``: centre,
side, eye angle): Haar's centred on its box, MTCNN's on its eyes (``MtcnnFace.frame()``), both calibrated so
that on CelebA's aligned faces they match the 178 px centre square (MTCNN's: medians of
:func:`core.detectors.mtcnn.celeba_framing` over the first ``--calibrate`` validation images, re-derived and
reported here). For each pair of squares on the same face (boxes matched by IoU), with ``a`` the reference:

    centre x, y = (b.cx - a.cx) / a.side, (b.cy - a.cy) / a.side; scale = ln(b.side / a.side);
    angle = b.angle - a.angle (degrees)

Comparisons: Haar vs MTCNN on the photo; Haar vs Haar and MTCNN vs MTCNN on the photo and on the photo plus
uniform noise of +-3/255 rounded to 8 bits (the re-detection jitter an attacker's detector shows on a
protected photo); with BlazeFace, also each of the two against it and it against itself after the noise.

BlazeFace is MediaPipe's short-range face detector (``mediapipe.solutions.face_detection``, model 0). Veil does
not depend on it: MediaPipe's current wheels ship no face model, 0.10.14's does, and its declared dependencies
(jax, opencv-contrib-python) are not needed to detect faces and clash with Veil's OpenCV. To include it:

    pip install --no-deps mediapipe==0.10.14 "protobuf>=4.25.3,<5" absl-py flatbuffers

Its square is anchored on its two eye keypoints like MTCNN's and calibrated the same way, in this run
(:func:`blaze_celeba_framing`).

Photos: UTKFace chips (``../shared/datasets/utkface/images``, evenly spaced in name order) and CelebA
validation images after the calibration ones. No image is written.

    python benchmarks/detectors.py                       # 500 UTKFace + 400 CelebA, one thread, ~8 min
    python benchmarks/detectors.py --utkface 100 --celeba 100 --calibrate 200
Writes benchmarks/results/detectors.json and detectors.md and prints a table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from core import faces as haar
from core.detectors import mtcnn
from core.faces import Face, Frame, box_iou

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
DATASETS = ROOT.parent / "shared" / "datasets"
UTKFACE = DATASETS / "utkface" / "images"
CELEBA = DATASETS / "celeba"
MATCH_IOU = 0.3  # boxes of the same face: Haar's square and MTCNN's taller rectangle overlap less than 0.5
NOISE = 3  # +-3/255
COMPARISONS = {
    "haar_vs_mtcnn": "Haar vs MTCNN",
    "haar_vs_haar_noise": "Haar vs Haar after noise",
    "mtcnn_vs_mtcnn_noise": "MTCNN vs MTCNN after noise",
}
BLAZE_COMPARISONS = {
    "haar_vs_blazeface": "Haar vs BlazeFace",
    "mtcnn_vs_blazeface": "MTCNN vs BlazeFace",
    "blazeface_vs_blazeface_noise": "BlazeFace vs BlazeFace after noise",
}
MEASURES = {"dx": "centre x (side)", "dy": "centre y (side)", "log_scale": "scale (ln ratio)", "angle": "angle (deg)"}


def read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def noisy(arr: np.ndarray, seed: int) -> np.ndarray:
    """The photo plus uniform noise of +-NOISE/255, rounded to 8 bits."""
    noise = np.random.default_rng(seed).uniform(-NOISE, NOISE, arr.shape)
    return np.clip(np.round(arr.astype(np.float64) + noise), 0, 255).astype(np.uint8)


def match(a: list[Face], b: list[Face]) -> list[tuple[Face, Face, float]]:
    """Greedy one-to-one pairs of faces whose boxes overlap by IoU >= MATCH_IOU, best overlap first."""
    pairs = sorted(((box_iou(fa.box, fb.box), i, j) for i, fa in enumerate(a) for j, fb in enumerate(b)), reverse=True)
    used_a: set[int] = set()
    used_b: set[int] = set()
    out = []
    for iou, i, j in pairs:
        if iou >= MATCH_IOU and i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            out.append((a[i], b[j], iou))
    return out


@dataclass(frozen=True)
class BlazeFace(mtcnn.MtcnnFace):
    """A face found by BlazeFace, framed like MTCNN's (anchored on the eyes) with its own square: measured on the
    first 400 CelebA validation faces (detectors.md), re-derived by :func:`calibrate` when it runs."""

    crop_scale: ClassVar[float] = 1.83
    crop_shift: ClassVar[tuple[float, float]] = (0.0, -0.05)


class BlazeFaceDetector:
    """MediaPipe's short-range BlazeFace on an RGB uint8 array: faces with their two eye keypoints."""

    def __init__(self) -> None:
        import mediapipe as mp  # optional: see the module's docstring

        self.net = mp.solutions.face_detection.FaceDetection(model_selection=0, min_detection_confidence=0.5)

    def __call__(self, arr: np.ndarray) -> list[BlazeFace]:
        h, w = arr.shape[:2]
        faces: list[BlazeFace] = []
        for det in self.net.process(np.ascontiguousarray(arr)).detections or []:
            loc = det.location_data
            b = loc.relative_bounding_box
            eyes = sorted((k.x * w, k.y * h) for k in loc.relative_keypoints[:2])  # left of the picture first
            faces.append(BlazeFace((b.xmin * w, b.ymin * h, b.width * w, b.height * h), float(det.score[0]),
                                   {"eye_left": eyes[0], "eye_right": eyes[1]}))
        return faces


def blaze_celeba_framing(detect: BlazeFaceDetector, aligned: np.ndarray) -> tuple[float, float, float] | None:
    """:func:`core.detectors.mtcnn.celeba_framing` for BlazeFace's most confident face."""
    found = detect(aligned)
    if not found:
        return None
    return mtcnn.celeba_offsets(max(found, key=lambda f: f.score), aligned.shape[1], aligned.shape[0])


def difference(a: Frame, b: Frame) -> dict[str, float]:
    turn = math.degrees(b.angle - a.angle)
    return {"dx": (b.cx - a.cx) / a.side, "dy": (b.cy - a.cy) / a.side, "log_scale": math.log(b.side / a.side),
            "angle": (turn + 180) % 360 - 180}


def summary(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {}
    return {"median": float(np.median(v)), "p10": float(np.percentile(v, 10)), "p90": float(np.percentile(v, 90)),
            "std": float(v.std()), "mean": float(v.mean())}


def round_all(obj: Any, digits: int = 4) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: round_all(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [round_all(v, digits) for v in obj]
    return obj


def calibrate(files: list[Path], blaze: BlazeFaceDetector | None) -> dict[str, Any]:
    """Medians (and 10th/90th percentiles) of celeba_framing for each detector on CelebA aligned faces; sets
    BlazeFace's square from its medians."""
    framings: dict[str, Any] = {"mtcnn": mtcnn.celeba_framing, "haar": haar.celeba_framing}
    if blaze is not None:
        framings["blazeface"] = lambda arr: blaze_celeba_framing(blaze, arr)
    out: dict[str, Any] = {}
    for name, fn in framings.items():
        rows = []
        for k, path in enumerate(files):
            found = fn(read_rgb(path))
            if found is not None:
                rows.append(found)
            if (k + 1) % 100 == 0:
                print(f"  calibration {name}: {k + 1}/{len(files)}", flush=True)
        r = np.asarray(rows).reshape(-1, 3)
        out[name] = {"faces": len(rows), "images": len(files),
                     **{key: summary(r[:, c].tolist()) for c, key in enumerate(("scale", "shift_x", "shift_y"))}}
    if "blazeface" in out and out["blazeface"]["faces"]:
        b = out["blazeface"]
        BlazeFace.crop_scale = round(b["scale"]["median"], 2)
        BlazeFace.crop_shift = (round(b["shift_x"]["median"], 2), round(b["shift_y"]["median"], 2))
    return out


def measure(files: list[Path], label: str, blaze: BlazeFaceDetector | None) -> dict[str, Any]:
    comparisons = {**COMPARISONS, **(BLAZE_COMPARISONS if blaze is not None else {})}
    diffs: dict[str, list[dict[str, float]]] = {c: [] for c in comparisons}
    ious: dict[str, list[float]] = {c: [] for c in comparisons}
    counts = {"photos": len(files), "haar_faces": 0, "mtcnn_faces": 0, "photos_haar": 0, "photos_mtcnn": 0,
              "haar_eyes": 0, "haar_noise_faces": 0, "mtcnn_noise_faces": 0}
    if blaze is not None:
        counts |= {"blazeface_faces": 0, "photos_blazeface": 0, "blazeface_noise_faces": 0}
    start = time.perf_counter()
    for k, path in enumerate(files):
        clean = read_rgb(path)
        rough = noisy(clean, seed=k)
        found: dict[str, list[Face]] = {"haar": haar.detect_faces(clean), "mtcnn": list(mtcnn.detect_faces(clean)),
                                         "haar_noise": haar.detect_faces(rough),
                                         "mtcnn_noise": list(mtcnn.detect_faces(rough))}
        if blaze is not None:
            found |= {"blazeface": list[Face](blaze(clean)), "blazeface_noise": list[Face](blaze(rough))}
            counts["blazeface_faces"] += len(found["blazeface"])
            counts["blazeface_noise_faces"] += len(found["blazeface_noise"])
            counts["photos_blazeface"] += bool(found["blazeface"])
        counts["haar_faces"] += len(found["haar"])
        counts["mtcnn_faces"] += len(found["mtcnn"])
        counts["haar_noise_faces"] += len(found["haar_noise"])
        counts["mtcnn_noise_faces"] += len(found["mtcnn_noise"])
        counts["photos_haar"] += bool(found["haar"])
        counts["photos_mtcnn"] += bool(found["mtcnn"])
        counts["haar_eyes"] += sum(f.landmarks is not None for f in found["haar"])
        for comparison in comparisons:
            first, second = comparison.split("_vs_")
            for a, b, iou in match(found[first], found[second]):
                diffs[comparison].append(difference(a.frame(), b.frame()))
                ious[comparison].append(iou)
        if (k + 1) % 50 == 0 or k + 1 == len(files):
            print(f"  {label}: {k + 1}/{len(files)} photos, {time.perf_counter() - start:.0f} s", flush=True)
    table = {}
    for comparison, rows in diffs.items():
        table[comparison] = {"pairs": len(rows), "iou_median": summary(ious[comparison]).get("median"),
                             **{m: summary([r[m] for r in rows]) for m in MEASURES}}
    return {"counts": counts, "disagreement": table}


def blazeface_or_none() -> BlazeFaceDetector | None:
    try:
        return BlazeFaceDetector()
    except ImportError:
        print("BlazeFace skipped: mediapipe is not installed (see this script's docstring)")
    except (AttributeError, RuntimeError, OSError) as exc:  # a wheel without mp.solutions or its face model
        print(f"BlazeFace skipped: this mediapipe cannot run it ({exc}); see this script's docstring")
    return None


def blaze_version() -> str:
    from importlib.metadata import version

    return version("mediapipe")


def mtcnn_seconds_512(repeats: int = 5) -> float:
    """Median seconds of one MTCNN detection on the 512x512 astronaut portrait (machine-dependent: printed only)."""
    from skimage import data

    img = data.astronaut()
    mtcnn.detect_faces(img)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        mtcnn.detect_faces(img)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def fmt(s: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    if not s:
        return "-"
    return (f"{s['median'] * scale:+.{digits}f} ({s['p10'] * scale:+.{digits}f}..{s['p90'] * scale:+.{digits}f}) "
            f"σ {s['std'] * scale:.{digits}f}")


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Face detectors: how Haar, MTCNN and BlazeFace disagree on the framing of the same face"
        if result.get("blazeface") else "# Face detectors: how Haar and MTCNN disagree on the framing of the same face",
        "",
        f"Command: `{result['command']}`. Photos: {result['photos']['utkface']} UTKFace, "
        f"{result['photos']['celeba']} CelebA validation (after the {result['photos']['celeba_calibration']} "
        f"used for calibration). Load average at start / end: {result['load']['start']} / {result['load']['end']}.",
        "",
        "Each face is the CelebA-style square (centre, side, eye angle). Differences of the second square from the "
        "first: centre in fractions of the first's side, scale as ln(side ratio), angle in degrees. Cells: median "
        "(10th..90th percentile) σ standard deviation. Noise: uniform ±3/255, rounded to 8 bits.",
        "",
        "| photos | comparison | pairs | IoU | centre x | centre y | scale | angle (°) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    labels = COMPARISONS | BLAZE_COMPARISONS
    for dataset, block in result["datasets"].items():
        for comparison, row in block["disagreement"].items():
            lines.append(
                f"| {dataset} | {labels[comparison]} | {row['pairs']} | {row['iou_median'] or 0:.2f} | "
                f"{fmt(row['dx'])} | {fmt(row['dy'])} | {fmt(row['log_scale'])} | {fmt(row['angle'], digits=1)} |"
            )
    blaze = bool(result.get("blazeface"))
    lines += ["", "Detections:", "",
              "| photos | photos | Haar faces (with eyes) | MTCNN faces |" + (" BlazeFace faces |" if blaze else "")
              + " after noise: Haar / MTCNN" + (" / BlazeFace |" if blaze else " |"),
              "|---|---|---|---|---|" + ("---|" if blaze else "")]
    for dataset, block in result["datasets"].items():
        c = block["counts"]
        lines.append(f"| {dataset} | {c['photos']} | {c['haar_faces']} ({c['haar_eyes']}) | {c['mtcnn_faces']} | "
                     + (f"{c['blazeface_faces']} | " if blaze else "")
                     + f"{c['haar_noise_faces']} / {c['mtcnn_noise_faces']}"
                     + (f" / {c['blazeface_noise_faces']} |" if blaze else " |"))
    const = result["constants"]["mtcnn"]
    if "calibration" not in result:
        return "\n".join(lines) + "\n"
    cal = result["calibration"]["mtcnn"]
    lines += [
        "",
        f"MTCNN square calibration (first {cal['images']} CelebA validation images, face found in {cal['faces']}; "
        "medians (10th..90th percentiles) of core.detectors.mtcnn.celeba_framing): side "
        f"{cal['scale']['median']:.3f} ({cal['scale']['p10']:.3f}..{cal['scale']['p90']:.3f}) box widths, centre "
        f"{cal['shift_x']['median']:+.3f} ({cal['shift_x']['p10']:+.3f}..{cal['shift_x']['p90']:+.3f}) right and "
        f"{cal['shift_y']['median']:+.3f} ({cal['shift_y']['p10']:+.3f}..{cal['shift_y']['p90']:+.3f}) down of the "
        f"eyes' midpoint. Constants in use: CROP_SCALE = {const['crop_scale']}, "
        f"CROP_SHIFT = {tuple(const['crop_shift'])}.",
    ]
    h = result["calibration"]["haar"]
    lines.append(
        f"Haar, re-measured on the same images (face in {h['faces']}): side {h['scale']['median']:.3f}, centre "
        f"{h['shift_x']['median']:+.3f}, {h['shift_y']['median']:+.3f} (core.faces: CROP_SCALE = "
        f"{haar.CROP_SCALE}, CROP_SHIFT = {haar.CROP_SHIFT}).")
    if "blazeface" in result["calibration"]:
        b = result["calibration"]["blazeface"]
        lines.append(
            f"BlazeFace (MediaPipe {result['blazeface']}, short-range model), calibrated on the same images like "
            f"MTCNN (face in {b['faces']}): side {b['scale']['median']:.3f} ({b['scale']['p10']:.3f}.."
            f"{b['scale']['p90']:.3f}) box widths, centre {b['shift_x']['median']:+.3f}, "
            f"{b['shift_y']['median']:+.3f} from the eyes' midpoint.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utkface", type=int, default=500, help="UTKFace photos (evenly spaced in name order)")
    parser.add_argument("--celeba", type=int, default=400, help="CelebA validation images after the calibration ones")
    parser.add_argument("--calibrate", type=int, default=400, help="first CelebA validation images for calibration")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import cv2

    cv2.setNumThreads(args.threads)
    load_start = os.getloadavg()
    if mtcnn.weights_dir() is None:
        sys.exit("MTCNN weights missing: pip install --no-deps facenet-pytorch (make setup does)")

    blaze = blazeface_or_none()
    seconds = mtcnn_seconds_512()
    print(f"MTCNN on the 512x512 astronaut: {seconds * 1000:.0f} ms ({args.threads} thread(s); not recorded)")

    datasets: dict[str, list[Path]] = {}
    if UTKFACE.is_dir():
        utk = sorted(UTKFACE.glob("*.jpg"))
        pick = np.linspace(0, len(utk) - 1, min(args.utkface, len(utk))).round().astype(int)
        datasets["utkface"] = [utk[i] for i in sorted(set(pick.tolist()))]
    else:
        print(f"UTKFace not found at {UTKFACE}: skipped")
    calibration: list[Path] = []
    if (CELEBA / "list_eval_partition.txt").is_file() and (CELEBA / "img_align_celeba").is_dir():
        val = sorted(line.split()[0] for line in (CELEBA / "list_eval_partition.txt").read_text().splitlines()
                     if len(line.split()) == 2 and line.split()[1] == "1")
        present = [CELEBA / "img_align_celeba" / f for f in val if (CELEBA / "img_align_celeba" / f).is_file()]
        calibration = present[: args.calibrate]
        datasets["celeba"] = present[args.calibrate : args.calibrate + args.celeba]
    else:
        print(f"CelebA not found at {CELEBA}: skipped")
    if not datasets:
        sys.exit("no dataset found: nothing to measure")

    started = time.perf_counter()
    result: dict[str, Any] = {
        "command": " ".join(["python benchmarks/detectors.py", *sys.argv[1:]]),
        "photos": {"utkface": len(datasets.get("utkface", [])), "celeba": len(datasets.get("celeba", [])),
                   "celeba_calibration": len(calibration)},
        "blazeface": blaze_version() if blaze is not None else None,
        "match_iou": MATCH_IOU,
        "noise_levels": NOISE,
        "constants": {"mtcnn": {"crop_scale": mtcnn.CROP_SCALE, "crop_shift": list(mtcnn.CROP_SHIFT)},
                      "haar": {"crop_scale": haar.CROP_SCALE, "crop_shift": list(haar.CROP_SHIFT)}},
    }
    if calibration:
        print(f"calibration on {len(calibration)} CelebA validation images", flush=True)
        result["calibration"] = calibrate(calibration, blaze)
        cal = result["calibration"]["mtcnn"]
        derived = (round(cal["scale"]["median"], 2), round(cal["shift_x"]["median"], 2),
                   round(cal["shift_y"]["median"], 2))
        print(f"MTCNN square: CROP_SCALE = {derived[0]}, CROP_SHIFT = ({derived[1]}, {derived[2]}) "
              f"(in use: {mtcnn.CROP_SCALE}, {mtcnn.CROP_SHIFT})")
        if derived != (mtcnn.CROP_SCALE, *mtcnn.CROP_SHIFT):
            print("  WARNING: core/detectors/mtcnn.py's constants differ from the ones derived here")
    if blaze is not None:  # the square BlazeFace's faces are measured with (calibrated above, or the default)
        result["constants"]["blazeface"] = {"crop_scale": BlazeFace.crop_scale,
                                            "crop_shift": list(BlazeFace.crop_shift)}
    result["datasets"] = {}
    for label, files in datasets.items():
        print(f"{label}: {len(files)} photos", flush=True)
        result["datasets"][label] = measure(files, label, blaze)
    result["load"] = {"start": [round(v, 2) for v in load_start], "end": [round(v, 2) for v in os.getloadavg()]}
    print(f"done in {time.perf_counter() - started:.0f} s")

    result = round_all(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "detectors.json").write_text(json.dumps(result, indent=2) + "\n")
    text = markdown(result)
    (RESULTS / "detectors.md").write_text(text)
    print(text)
    print(f"wrote {RESULTS / 'detectors.json'}")


if __name__ == "__main__":
    main()
