"""What compiling a forger buys (``core.forgers.compile_forger``, ``VEIL_WORKER_COMPILE_FORGERS``): milliseconds
per pass of each shipped default forger, eager against compiled, without gradients (the receipt's passes) and
with them (PGD's steps), timed interleaved in one process so that the machine's load falls on both alike.

    python benchmarks/compiled_forgers.py --threads 2
Writes ``benchmarks/results/compiled-forgers.json`` and prints a table.
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

from core.forgers import Forger, compile_forger, create_forger

RESULTS = Path(__file__).parent / "results"


def _pass(forger: Forger, x: torch.Tensor, c: torch.Tensor, grad: bool) -> float:
    x = x.clone().requires_grad_(grad)
    start = time.perf_counter()
    with torch.set_grad_enabled(grad):
        out = forger(x, c)
    if grad:
        out.sum().backward()
    return time.perf_counter() - start


def measure(name: str, batch: int, repeats: int) -> dict[str, Any]:
    eager, compiled = create_forger(name).freeze(), create_forger(name).freeze()
    row: dict[str, Any] = {"forger": name, "weights": Path(eager.source).stem, "batch": batch,
                           "compile_seconds": round(compile_forger(compiled), 1)}
    x = torch.rand(batch, 3, eager.image_size, eager.image_size) * 2 - 1
    c = torch.zeros(batch, eager.c_dim)
    for grad in (False, True):
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(repeats):
            for label, forger in (("eager", eager), ("compiled", compiled)):
                times[label].append(_pass(forger, x, c, grad))
        key = "grad" if grad else "no_grad"
        row[f"{key}_eager_ms"] = round(1e3 * statistics.median(times["eager"]), 1)
        row[f"{key}_compiled_ms"] = round(1e3 * statistics.median(times["compiled"]), 1)
        row[f"{key}_speedup"] = round(row[f"{key}_eager_ms"] / row[f"{key}_compiled_ms"], 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forger", action="append", help="default: stargan, fpgan and attgan")
    ap.add_argument("--batch", type=int, default=5, help="faces x targets per pass (5: one face, the default targets)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = round(os.getloadavg()[0], 2)
    rows = [measure(name, args.batch, args.repeats) for name in args.forger or ["stargan", "fpgan", "attgan"]]
    info = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
            "torch": torch.__version__, "repeats": args.repeats, "load_average_1min_start": load,
            "load_average_1min_end": round(os.getloadavg()[0], 2)}
    print("| forger | compile s | no grad: eager / compiled ms | speed-up | grad: eager / compiled ms | speed-up |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weights']} | {r['compile_seconds']} | {r['no_grad_eager_ms']} / {r['no_grad_compiled_ms']} | "
              f"{r['no_grad_speedup']}x | {r['grad_eager_ms']} / {r['grad_compiled_ms']} | {r['grad_speedup']}x |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "compiled-forgers.json"
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
