"""Forger quality per CPU-hour, one line per recipe: the forger campaign's snapshots measured by the judge.

Every snapshot the campaign (``scripts/forger_campaign.py``) wrote carries its iteration and the CPU seconds
spent to reach it. Each is measured here on the first ``--faces`` CelebA validation faces with the 128 px
evaluation classifier (``attribute-classifier-128``, never a training signal): target accuracy, edit strength
MSE(G(x, c_trg), x) and identity error MSE(G(x, c_org), x). Measurements are cached next to the snapshots,
so a rerun measures only new ones.

    python benchmarks/forger_recipes.py                 # the campaign's state (see scripts/forger_campaign.py)
Writes ``benchmarks/results/forger-recipes.json`` and ``forger-recipes.png`` and prints a table, then each
architecture's outlook: its best stage, that stage's trend per CPU-hour over the last hour of its curve, and the
CPU-hours to each goal at that trend (a straight line: where the curves bend, as they do, an optimistic one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from forger_campaign import PLAN, SELECT_FACES, default_state, read_status, score, seed_start, share

from core.checkpoints import load_weights
from core.classifier import load_judge
from core.data import FacePack, default_celeba_dir
from core.forger_eval import measure_forger
from core.forgers import arch, create_forger

RESULTS = Path(__file__).parent / "results"
KEYS = ("target_accuracy", "edit_strength", "identity_mse", "reconstruction_mse")
# The goals for the shipped 128 px defaults: target accuracy per architecture, identity error at most a third of
# the edit strength, an edit strength of at least 0.03.
ACCURACY_GOAL = {"stargan": 0.85, "fpgan": 0.85, "attgan": 0.80}
SHARE_GOAL = 1 / 3
EDIT_GOAL = 0.03
# A stage's trend is read from the last hour of its own curve (at least 3 points over a quarter of an hour):
# older points belong to a stage that was still finding its feet after it started from another's seed.
TREND_HOURS = 1.0


def measure_snapshot(path: Path, faces: torch.Tensor, attrs: torch.Tensor, judge: Any) -> dict[str, Any]:
    _, meta = load_weights(path)
    forger = create_forger(meta["forger"], path, config=meta["config"])
    m = measure_forger(forger, faces, attrs, judge)
    return {"iteration": int(meta["iterations"]), "cpu_hours": float(meta["cpu_seconds"]) / 3600,
            **{k: m[k] for k in KEYS}}


def collect(state: Path, n_faces: int) -> dict[str, list[dict[str, Any]]]:
    judge = load_judge()
    out: dict[str, list[dict[str, Any]]] = {}
    packs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for run in sorted((state / "runs").iterdir()):
        snaps = sorted((run / "snapshots").glob("*.safetensors")) if run.is_dir() else []
        if not snaps:
            continue
        cache_path = run / "measured.json"
        cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
        key = f"{n_faces}:{judge.image_size}"
        for snap in snaps:
            if f"{key}:{snap.name}" in cache:
                continue
            meta = load_weights(snap)[1]
            size = int(arch(meta["forger"]).config(meta["config"])["image_size"])
            if size not in packs:
                val = FacePack.load(default_celeba_dir(), "val", size, state / "runs" / "cache")
                packs[size] = val[torch.arange(min(n_faces, len(val)))]
            cache[f"{key}:{snap.name}"] = measure_snapshot(snap, *packs[size], judge)
            print(f"{run.name} {snap.name}: {cache[f'{key}:{snap.name}']}", flush=True)
            cache_path.write_text(json.dumps(cache, indent=1))
        out[run.name] = sorted((v for k, v in cache.items() if k.startswith(key + ":")), key=lambda r: r["iteration"])
    return out


def started_at(curves: dict[str, list[dict[str, Any]]], status: dict[str, Any] | None = None
               ) -> dict[str, tuple[str, float]]:
    """For a stage that went on from another stage's seed with another recipe: that stage, and where on the curve's
    CPU-hours it began (the new stage counts its own hours from 0; the curve is drawn from there). A chain adds
    up: a stage that went on from one that itself went on from a third begins after the hours of both."""
    out: dict[str, tuple[str, float]] = {}
    for stage in PLAN:  # in plan order: a source stage comes before the stages that go on from it
        began = seed_start(stage, status) if stage["stage"] in curves else None
        if began is not None:
            upstream = out.get(began["stage"], ("", 0.0))[1]
            out[stage["stage"]] = (began["stage"], upstream + float(began["cpu_hours"]))
    return out


def trend(rows: list[dict[str, Any]], key: Any, hours: float = TREND_HOURS) -> float | None:
    """Least-squares slope per CPU-hour of ``key(point)`` over the last ``hours`` of a stage's curve; None with too
    few points to read one."""
    last = rows[-1]["cpu_hours"]
    recent = [r for r in rows if r["cpu_hours"] >= last - hours]
    if len(recent) < 3 or recent[-1]["cpu_hours"] - recent[0]["cpu_hours"] < 0.25:
        return None
    return statistics.linear_regression([r["cpu_hours"] for r in recent], [key(r) for r in recent]).slope


def hours_to(now: float, goal: float, slope: float | None, rising: bool) -> float | None:
    """CPU-hours to reach ``goal`` from ``now`` at ``slope`` per hour: 0 once reached, inf where the trend is flat or
    goes the wrong way, None without a trend."""
    gap = goal - now if rising else now - goal
    if gap <= 0:
        return 0.0
    if slope is None:
        return None
    rate = slope if rising else -slope
    return gap / rate if rate > 0 else math.inf


def outlook(curves: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per architecture: its best stage by the campaign's score at its last point, where that stands against the
    goals, its trend per CPU-hour and the CPU-hours to each goal at that trend; and the CPU-hours the campaign has
    spent on the architecture in all (each stage's own hours, summed)."""
    out: dict[str, dict[str, Any]] = {}
    for forger, goal in ACCURACY_GOAL.items():
        stages = {s["stage"] for s in PLAN if s["forger"] == forger}
        rows = {name: pts for name, pts in curves.items() if name in stages and pts}
        if not rows:
            continue
        best = max(rows, key=lambda name: score(rows[name][-1]))
        last = rows[best][-1]
        acc_slope, share_slope = trend(rows[best], lambda r: r["target_accuracy"]), trend(rows[best], share)
        out[forger] = {
            "stage": best, "cpu_hours_spent": round(sum(pts[-1]["cpu_hours"] for pts in rows.values()), 2),
            "target_accuracy": last["target_accuracy"], "identity_share": share(last),
            "edit_strength": last["edit_strength"], "accuracy_per_cpu_hour": acc_slope,
            "share_per_cpu_hour": share_slope,
            "cpu_hours_to_accuracy_goal": hours_to(last["target_accuracy"], goal, acc_slope, rising=True),
            "cpu_hours_to_share_goal": hours_to(share(last), SHARE_GOAL, share_slope, rising=False),
            "edit_goal_met": last["edit_strength"] >= EDIT_GOAL,
        }
    return out


def _hours(value: float | None) -> str:
    return "no trend yet" if value is None else "never at this trend" if math.isinf(value) else f"{value:.1f}"


def print_outlook(view: dict[str, dict[str, Any]]) -> None:
    print("\narchitecture  best stage                          CPU-h spent  accuracy (/h)    identity share (/h)"
          "   CPU-h to accuracy goal / share goal")
    for forger, o in view.items():
        acc = "" if o["accuracy_per_cpu_hour"] is None else f" ({100 * o['accuracy_per_cpu_hour']:+.1f})"
        sh = "" if o["share_per_cpu_hour"] is None else f" ({o['share_per_cpu_hour']:+.3f})"
        to_goals = f"{_hours(o['cpu_hours_to_accuracy_goal'])} / {_hours(o['cpu_hours_to_share_goal'])}"
        print(f"{forger:12s}  {o['stage']:34s}  {o['cpu_hours_spent']:11.2f}  {100 * o['target_accuracy']:.1f} %"
              f"{acc:9s}  {o['identity_share']:.2f}{sh:10s}        {to_goals}")


def _json_hours(view: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """JSON has no infinity: a goal never reached at the trend is written as the string "never"."""
    return {f: {k: "never" if isinstance(v, float) and math.isinf(v) else v for k, v in o.items()}
            for f, o in view.items()}


def plot(curves: dict[str, list[dict[str, Any]]], path: Path, status: dict[str, Any] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4))
    for ax in axes:  # more stages than the default cycle's 10 colours
        ax.set_prop_cycle(color=[plt.get_cmap("tab20")(i) for i in range(20)])
    origins = started_at(curves, status)
    for name, rows in curves.items():
        source, offset = origins.get(name, ("", 0.0))
        if source:
            name = f"{name} (on from {source} at {offset:.2f} h)"
        hours = [offset + r["cpu_hours"] for r in rows]
        axes[0].plot(hours, [100 * r["target_accuracy"] for r in rows], marker="o", label=name)
        axes[1].plot(hours, [r["edit_strength"] for r in rows], marker="o", label=name)
        axes[2].plot(hours, [share(r) for r in rows], marker="o", label=name)
    axes[0].axhline(100 * ACCURACY_GOAL["stargan"], color="grey", linestyle="--", linewidth=1)
    axes[1].axhline(EDIT_GOAL, color="grey", linestyle="--", linewidth=1)
    axes[2].axhline(SHARE_GOAL, color="grey", linestyle="--", linewidth=1)
    for ax, title in zip(axes, ("target accuracy (%), goal 85", "edit strength MSE, goal >= 0.03",
                                "identity error / edit strength, goal <= 1/3"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("CPU-hours (one thread)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # below the plots, where it hides no point
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    fig.savefig(path, dpi=100)


def committed_curves(n_faces: int) -> dict[str, list[dict[str, Any]]]:
    """The committed curve's points (measured on as many faces): a fresh machine keeps only the stages' seeds,
    not their earlier snapshots, so the curve grows from what was committed."""
    path = RESULTS / "forger-recipes.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data["curves"] if data.get("info", {}).get("faces") == n_faces else {}


def status_points(state: Path, n_faces: int) -> dict[str, list[dict[str, Any]]]:
    """Each stage's last snapshot as the campaign measured it (on its selection faces, by the same judge): all
    that is left of a stage whose snapshots went with a machine."""
    if n_faces != SELECT_FACES:
        return {}
    out = {}
    for stage, rec in read_status(state)["stages"].items():
        if rec.get("measured") and rec.get("snapshot"):
            point = {"iteration": int(Path(rec["snapshot"]).stem), "cpu_hours": rec["snapshot_cpu_seconds"] / 3600}
            out[stage] = [{**point, **{k: rec["measured"][k] for k in KEYS}}]
    return out


def merged(old: dict[str, list[dict[str, Any]]], new: dict[str, list[dict[str, Any]]]
           ) -> dict[str, list[dict[str, Any]]]:
    """Per stage, the points of both, one per iteration (the new measurement where both have it)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for stage in dict.fromkeys([*old, *new]):
        points = {p["iteration"]: p for p in old.get(stage, [])} | {p["iteration"]: p for p in new.get(stage, [])}
        out[stage] = sorted(points.values(), key=lambda p: p["cpu_hours"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=default_state())
    ap.add_argument("--faces", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = round(os.getloadavg()[0], 2)
    curves = merged(merged(committed_curves(args.faces), status_points(args.state, args.faces)),
                    collect(args.state, args.faces))
    for name, rows in curves.items():
        print(f"\n{name}")
        print("  iteration  CPU-h  target acc  edit    identity  id/edit")
        for r in rows:
            print(f"  {r['iteration']:9d}  {r['cpu_hours']:5.2f}  {100 * r['target_accuracy']:9.1f}%  "
                  f"{r['edit_strength']:.4f}  {r['identity_mse']:.4f}    {share(r):.2f}")
    view = outlook(curves)
    print_outlook(view)
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = {"faces": args.faces, "judge": "attribute-classifier-128 (the 64 px classifier where it is absent)",
            "load_average_1min_start": load, "load_average_1min_end": round(os.getloadavg()[0], 2),
            "command": f"python benchmarks/forger_recipes.py --faces {args.faces}"}
    (RESULTS / "forger-recipes.json").write_text(json.dumps({"info": info, "outlook": _json_hours(view),
                                                                   "curves": curves}, indent=1))
    plot(curves, RESULTS / "forger-recipes.png", read_status(args.state))
    print("wrote benchmarks/results/forger-recipes.json, .png")


if __name__ == "__main__":
    main()
