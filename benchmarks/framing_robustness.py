"""How far a protection made at the photo's resolution survives a detector framing the face at another scale.

For each photo, PGD (stargan, its default budget) is run at the photo's resolution through the attacker's
channel with no platform step and only a framing error: none, the measured MTCNN-vs-Haar spread on CelebA
(log-scale sigma 0.07), or a wider one (0.12, about the UTKFace gap). The protected photo is then cropped at
the protection's own framing scaled by 0.8 ... 1.25 (a detector framing the face larger or smaller), and the
forger's edits of those crops are compared with its edits of the same crops of the clean photo: the
distortion (MSE between the edits) against the 0.05 threshold of a defended edit, and the success rate.

    python benchmarks/framing_robustness.py --utkface 2 --steps 60
Writes ``benchmarks/results/framing-robustness.json`` and ``.md``; prints a table.
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

from core.channel import IDENTITY, Framing
from core.evaluate import measure
from core.faces import Frame
from core.image import load_image
from core.protect import build_protection, protect_images, work_size
from core.receipt import attacker_crops, forger_numbers
from core.workflows import demo_image

RESULTS = Path(__file__).parent / "results"
UTKFACE = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "utkface" / "images"
SPREADS = (0.0, 0.07, 0.12)  # EOT log-scale sigma; 0: no framing error at all
SCALES = (0.8, 0.9, 1.0, 1.1, 1.25)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utkface", type=int, default=2, help="UTKFace photos besides the astronaut")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--samples", type=int, default=3, help="channel draws per step")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    files = [demo_image(Path("out/bench-photos"))]
    if UTKFACE.is_dir():
        files += sorted(UTKFACE.iterdir())[1 : 1 + args.utkface]
    protection = build_protection("pgd", ("stargan",), steps=args.steps)
    size = work_size(protection)
    load = [round(os.getloadavg()[0], 2)]
    rows: list[dict[str, Any]] = []
    for spread in SPREADS:
        framing = Framing(shift=0.02 if spread else 0.0, log_scale=spread, angle=2.0 if spread else 0.0)
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
                tally = measure(attacker_crops(image.tensor, [seen], size), attacker_crops(result.x_adv, [seen], size),
                                result.targets[:1], protection.forgers, ("clean",), quality=False)
                n = forger_numbers(tally, protection.forgers)["stargan"]
                row[f"x{scale}"] = {"distortion": n["distortion"], "success_rate": n["success_rate"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    load.append(round(os.getloadavg()[0], 2))
    info = {"command": f"python benchmarks/framing_robustness.py --utkface {args.utkface} --steps {args.steps} "
                       f"--samples {args.samples} --threads {args.threads}",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average_1min": load,
            "method": protection.describe()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "framing-robustness.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    lines = ["# Framing robustness (PGD at the photo's resolution, stargan-compact64)", "",
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
