"""Record each committed `veil eval` table's check: its one-pass rows recomputed on its first faces, which
`tests/core/test_shipped.py` recomputes from the shipped generators. Run after adding or re-making a table.

    python scripts/record_eval_checks.py [benchmarks/results/eval-*.json ...] [--data CELEBA_ROOT]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from core.data import default_celeba_dir
from core.workflows import TABLE_CHECK_FACES, record_table_check

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="*", type=Path, help="eval tables (default: every eval-*.json committed)")
    ap.add_argument("--data", type=Path, default=None, help="CelebA root (default: the shared dataset)")
    ap.add_argument("--faces", type=int, default=TABLE_CHECK_FACES)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for path in args.tables or sorted(RESULTS.glob("eval-*.json")):
        check = record_table_check(path, args.data or default_celeba_dir(), args.faces)
        print(f"{path.name}: " + ("no one-pass rows" if check is None else f"check on {check['faces']} faces"))


if __name__ == "__main__":
    main()
