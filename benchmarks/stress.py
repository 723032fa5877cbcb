"""Stress test (Disrupting Deepfakes): how far each method's success rate falls on a forger fine-tuned on
faces protected by that very method.

For each method: protect ``--train-faces`` CelebA training faces against the shipped forger, fine-tune a copy
of the forger on them (:func:`core.stress.finetune_on_protected`), then protect ``--val-faces`` validation
faces against the *original* forger (the protector does not know the adapted one) and measure the defense
success rate on the original and on the adapted forger. Also reported: how much the adaptation changed the
forger's edits of clean faces (MSE, [-1, 1]), so that an "adaptation" that broke the editor shows.

    python benchmarks/stress.py --data ../shared/datasets/celeba --train-faces 128 --val-faces 32 --steps 200

Writes ``benchmarks/results/stress-<forger config>.json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.data import FacePack, celeba_available  # noqa: E402
from core.protect import build_protection, load_forger  # noqa: E402
from core.stress import finetune_on_protected, success_rate  # noqa: E402
from core.targets import targets_for  # noqa: E402
from core.workflows import load_faces  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run_method(method: str, forger: Any, train: tuple[torch.Tensor, torch.Tensor],
               val: tuple[torch.Tensor, torch.Tensor], args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    protection = build_protection(method, ("stargan",), steps=args.method_steps, seed=0)
    (x_tr, t_tr), (x_val, t_val) = train, val
    adv_tr = protection(x_tr, targets=t_tr)
    adapted, losses = finetune_on_protected(forger, x_tr, adv_tr, t_tr, steps=args.steps, lr=args.lr,
                                            batch_size=args.batch_size)
    adv_val = protection(x_val, targets=t_val)
    with torch.no_grad():
        xs = x_val.repeat_interleave(t_val.shape[1], dim=0)
        cs = t_val.flatten(0, 1)
        drift = float((adapted(xs, cs) - forger(xs, cs)).pow(2).mean())
    return {
        "method": method,
        "success_before": success_rate(forger, x_val, adv_val, t_val),
        "success_after": success_rate(adapted, x_val, adv_val, t_val),
        "clean_edit_drift_mse": drift,
        "loss_first": sum(losses[:10]) / max(1, len(losses[:10])),
        "loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "celeba")
    p.add_argument("--methods", nargs="+", default=["pgd", "anti-forgery", "dwt-pgd"])
    p.add_argument("--train-faces", type=int, default=128)
    p.add_argument("--val-faces", type=int, default=32)
    p.add_argument("--method-steps", type=int, default=10)
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not celeba_available(args.data):
        print(f"error: no CelebA layout in {args.data}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    forger = load_forger("stargan")
    size = forger.image_size
    pack = FacePack.load(args.data, "train", size, REPO / "runs" / "cache", limit=args.train_faces)
    x_tr, a_tr = pack[slice(0, args.train_faces)]
    x_val, a_val, _ = load_faces(args.data, args.val_faces, size)
    train = (x_tr, targets_for(x_tr, forger.attributes, a_tr))
    val = (x_val, targets_for(x_val, forger.attributes, a_val))
    rows = [run_method(m, forger, train, val, args) for m in args.methods]
    print("| method | success, original forger | success, adapted forger | clean-edit drift (MSE) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {100 * r['success_before']:.1f} % | {100 * r['success_after']:.1f} % | "
              f"{r['clean_edit_drift_mse']:.4f} |")
    out = {
        "info": {"command": "python benchmarks/stress.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "started": datetime.now().isoformat(timespec="seconds"), "forger": Path(forger.source).name,
                 "machine": {"cpu": platform.machine(), "torch": torch.__version__},
                 "params": {k: v for k, v in vars(args).items() if k != "data"}},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"stress-{forger.config.get('config_name', 'stargan')}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
