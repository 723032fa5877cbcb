"""Seconds per face for each protection method, batch 1 and 16, on this machine's CPU (and GPU).

Times a few iterations per (method, batch) and reports the median seconds per iteration per face, the
time per face at the method's default number of steps (median per-step time x steps + the one-off
clean pass) and at 100 steps. A one-pass (generator) method is timed as its single forward pass, and
compared with PGD at 100 steps over the same targets (the speed-up). Forgers and generators have random
weights: speed does not depend on them.

    python benchmarks/protect.py                       # reference StarGAN (celeba128), 128 px, CPU
    python benchmarks/protect.py --config compact64 --size 64 --device cuda
Writes benchmarks/results/protect-<device>-<config>[-<size>px].json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from core.forgers import create_forger
from core.methods import create_method, method_class, method_names
from core.targets import fixed_targets

RESULTS = Path(__file__).parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(method, x: torch.Tensor, targets: torch.Tensor, repeats: int, device: torch.device) -> float:
    method(x[:1], targets=targets[:1])  # warm-up
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        method(x, targets=targets)
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_method(name: str, forger, batch: int, steps: int, repeats: int, device: torch.device, size: int,
                generator_config: str) -> dict:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    targets = fixed_targets(forger.attributes).to(device).expand(batch, -1, -1)
    row = {"method": name, "batch": batch, "targets": targets.shape[1], "repeats": repeats}
    if getattr(method_class(name), "one_pass", False):
        method = create_method(name, forger, pretrained=False, config=generator_config)
        seconds = median_seconds(method, x, targets, repeats, device) / batch
        return {**row, "one_pass": True, "s_per_face_default_steps": seconds, "default_steps": 1}
    runs = {}
    for n_steps in (0, steps):  # 0 steps = the clean pass and setup; the difference is the iterations
        runs[n_steps] = median_seconds(create_method(name, forger, steps=n_steps), x, targets, repeats, device)
    per_step = max(runs[steps] - runs[0], 0.0) / steps
    default_steps = method_class(name).defaults.get("steps", 10)
    return {
        **row,
        "s_per_step_per_face": per_step / batch,
        "s_per_face_default_steps": (runs[0] + per_step * default_steps) / batch,
        "s_per_face_100_steps": (runs[0] + per_step * 100) / batch,
        "default_steps": default_steps,
        "measured_steps": steps,
    }


def speedups(rows: list[dict]) -> list[dict]:
    """Each one-pass method's speed-up over PGD at 100 steps (same batch, same targets, same run)."""
    pgd = {r["batch"]: r["s_per_face_100_steps"] for r in rows if r["method"] == "pgd"}
    return [{"method": r["method"], "batch": r["batch"], "vs": "pgd-100",
             "speedup": pgd[r["batch"]] / r["s_per_face_default_steps"]}
            for r in rows if r.get("one_pass") and r["batch"] in pgd]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="celeba128", help="StarGAN config (celeba128 or compact64)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--steps", type=int, default=2, help="iterations timed per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="face side in pixels")
    parser.add_argument("--methods", default=",".join(method_names()), help="default: every method")
    parser.add_argument("--merge", action="store_true", help="replace only these methods' rows in the results")
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    device = torch.device(args.device)
    forger = create_forger("stargan", config=args.config, pretrained=False).to(device)
    rows = []
    for name in args.methods.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            row = time_method(name, forger, batch, args.steps, args.repeats, device, args.size, args.config)
            rows.append(row)
            print(f"{name:14s} batch {batch:3d}: {row.get('s_per_step_per_face', 0):.3f} s/step/face, "
                  f"{row['s_per_face_default_steps']:.4f} s/face at {row['default_steps']} steps", flush=True)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1min_start": round(load_start, 2),
        "forger": f"stargan/{args.config}",
        "image_size": args.size,
        "command": "python benchmarks/protect.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k not in ("methods", "merge")),
    }
    info["load_average_1min_end"] = round(os.getloadavg()[0], 2)  # >> threads means the run was contended
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.size == 128 else f"-{args.size}px"
    out = RESULTS / f"protect-{device.type}-{args.config}{suffix}.json"
    if args.merge and out.is_file():  # re-measure some methods, keep the other rows
        old = json.loads(out.read_text())
        redone = {r["method"] for r in rows}
        rows = [r for r in old["rows"] if r["method"] not in redone] + rows
        info = {**old["info"], "merged": [*old["info"].get("merged", []), info]}
    ratios = speedups(rows)
    out.write_text(json.dumps({"info": info, "rows": rows, "speedups": ratios}, indent=2) + "\n")
    print("\n| method | batch | s/step/face | s/face (default steps) | s/face (100 steps) |\n|---|---|---|---|---|")
    for r in rows:
        per_step = f"{r['s_per_step_per_face']:.3f}" if "s_per_step_per_face" in r else "one pass"
        hundred = f"{r['s_per_face_100_steps']:.2f}" if "s_per_face_100_steps" in r else "-"
        print(f"| {r['method']} | {r['batch']} | {per_step} | {r['s_per_face_default_steps']:.4f} "
              f"({r['default_steps']} steps) | {hundred} |")
    for r in ratios:
        print(f"{r['method']} batch {r['batch']}: {r['speedup']:.0f}x faster than PGD-100")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
