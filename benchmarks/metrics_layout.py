"""What the memory layout costs the report's quality metrics on CPU: milliseconds of SSIM (``pytorch_msssim``,
the window a grouped convolution) and of LPIPS-alex on the same images in the default (NCHW contiguous) layout
and in ``channels_last``, interleaved in one process so that the machine's load falls on both alike, and the
largest difference of the values (``core.metrics`` uses ``channels_last`` for both).

Sizes: a batch of forger crops (4 x 128 px), the face region of a 512 px portrait (256 px) and of a 12 MP photo
(1,200 px), random images with a small perturbation.

    python benchmarks/metrics_layout.py --threads 2
Writes ``benchmarks/results/metrics-layout.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytorch_msssim
import torch

from core.metrics import LPIPS

RESULTS = Path(__file__).parent / "results"
SIZES = {"4 crops, 128 px": (4, 128), "512 px portrait's face, 256 px": (1, 256),
         "12 MP photo's face, 1200 px": (1, 1200)}


def _ms(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - start)


def measure(label: str, batch: int, side: int, repeats: int, lpips: dict[str, LPIPS]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(batch, 3, side, side, generator=gen)
    b = (a + 0.02 * torch.randn(a.shape, generator=gen)).clamp(0, 1)
    cl = torch.channels_last
    ssim_in = {"contiguous": (a, b), "channels_last": (a.contiguous(memory_format=cl), b.contiguous(memory_format=cl))}
    metrics: dict[str, dict[str, Callable[[], torch.Tensor]]] = {
        "ssim": {k: partial(pytorch_msssim.ssim, x, y, data_range=1.0, size_average=False)
                 for k, (x, y) in ssim_in.items()},
        "lpips": {k: partial(net, a * 2 - 1, b * 2 - 1) for k, net in lpips.items()},
    }
    row: dict[str, Any] = {"size": label, "batch": batch, "side": side}
    with torch.no_grad():
        for name, fns in metrics.items():
            values = {k: fn() for k, fn in fns.items()}  # also the warm-up
            times: dict[str, list[float]] = {k: [] for k in fns}
            for _ in range(repeats):
                for k, fn in fns.items():
                    times[k].append(_ms(fn))
            med = {k: statistics.median(v) for k, v in times.items()}
            row[name] = {"ms": {k: round(v, 2) for k, v in med.items()},
                         "speedup": round(med["contiguous"] / med["channels_last"], 2),
                         "max_abs_difference": float((values["contiguous"] - values["channels_last"]).abs().max())}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lpips = {"contiguous": LPIPS().eval(), "channels_last": LPIPS().eval()}
    lpips["contiguous"].memory_format = torch.contiguous_format
    load = os.getloadavg()[0]
    rows = [measure(label, batch, side, args.repeats, lpips) for label, (batch, side) in SIZES.items()]
    result = {"command": f"python benchmarks/metrics_layout.py --threads {args.threads} --repeats {args.repeats}",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
              "threads": args.threads, "load_average_1min": [round(load, 2), round(os.getloadavg()[0], 2)],
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metrics-layout.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'size':34s} {'metric':6s} {'contiguous ms':>14s} {'channels_last ms':>17s} {'speed-up':>9s} "
          f"{'max diff':>9s}")
    for row in rows:
        for name in ("ssim", "lpips"):
            r = row[name]
            print(f"{row['size']:34s} {name:6s} {r['ms']['contiguous']:14.1f} {r['ms']['channels_last']:17.1f} "
                  f"{r['speedup']:8.2f}x {r['max_abs_difference']:9.1e}")
    print(f"wrote {RESULTS / 'metrics-layout.json'}")


if __name__ == "__main__":
    main()
