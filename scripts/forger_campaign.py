"""The forger campaign: train the 128 px forgers in the background of all other work, resumably.

One process, one torch thread, low priority. State lives outside the work tree (``--state``, default
``$VEIL_CAMPAIGN`` or ``~/.local/share/veil/campaign``) so that a fresh checkout resumes where the last one
stopped: ``runs/<stage>/state.pt`` per stage, ``cache/`` for the CelebA packs, and a snapshot of each
stage's exported generator every ``--snapshot-minutes`` of its CPU time (``runs/<stage>/snapshots/``,
metadata: iteration and CPU seconds). ``benchmarks/forger_recipes.py`` measures the snapshots with the
evaluation classifier and plots quality per CPU-hour.

Stages in a ``pilot`` group share the CPU round-robin until each has had ``pilot_hours``; then only the
group's best stage (by the last measured score) goes on. Architectures take turns of ``TURN_HOURS`` in plan
order; after that the one furthest from the goals trains next.

    python scripts/forger_campaign.py             # run (Ctrl-C / SIGTERM saves and stops)
    python scripts/forger_campaign.py --status    # where each stage stands
    python scripts/forger_campaign.py --only STAGE   # train one stage (a second process, on another core)
    python scripts/forger_campaign.py --export-seed   # write checkpoints/campaign/ from the state, to commit
    python scripts/forger_campaign.py --ship STAGE NAME  # export a stage as the default NAME in checkpoints/

A lost machine loses the state directory. The seed (``checkpoints/campaign/``, committed) holds each stage's
generator, its moving average and its critic in fp16, with the iteration, the CPU seconds and the campaign's
status; ``--export-seed`` writes it from the state and a stage with no state of its own resumes from it
(fresh optimiser moments: a few steps of Adam's bias correction, not a restart).

While the repository is being edited, run it from an exported copy of HEAD (``git archive HEAD | tar -x -C
DIR``, then ``python DIR/scripts/forger_campaign.py`` with ``VEIL_CHECKPOINTS`` set to the repository's
``checkpoints/``): it imports modules lazily, and a half-edited module in the work tree can stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The plan. A pilot group compares recipes on equal CPU time; its best stage is trained on.
PLAN: list[dict[str, Any]] = [
    {"stage": "stargan-compact128-published", "forger": "stargan", "config": "compact128", "recipe": "published",
     "group": "stargan", "pilot_hours": 0.4},
    {"stage": "stargan-compact128-cpu", "forger": "stargan", "config": "compact128", "recipe": "cpu",
     "group": "stargan", "pilot_hours": 0.4},
    {"stage": "stargan-compact128-cpu-warm", "forger": "stargan", "config": "compact128", "recipe": "cpu",
     "init_from": "stargan-compact64", "group": "stargan", "pilot_hours": 0.4},
    {"stage": "fpgan-compact128-cpu", "forger": "fpgan", "config": "compact128", "recipe": "cpu",
     "init_from_stage": "stargan", "group": "fpgan"},
    # From scratch the 128 px AttGAN was still mostly artefacts at 1.2 CPU-hours (23.7 % target accuracy, identity
    # error as large as its edit): a pilot against the shipped 64 px AttGAN's weights at compact64's depth.
    {"stage": "attgan-compact128-cpu", "forger": "attgan", "config": "compact128", "recipe": "cpu",
     "group": "attgan", "pilot_hours": 0.4},
    {"stage": "attgan-compact128l4-cpu-warm", "forger": "attgan", "config": "compact128l4", "recipe": "cpu",
     "init_from": "attgan-compact64", "group": "attgan", "pilot_hours": 0.4},
    # The warm AttGAN plateaued at 38-41 % from 1.8 to 3.1 CPU-hours while its edit weakened (0.024 -> 0.019):
    # lambda_rec 100 on G(x, c_org) pulls every output towards the input. The same weights go on with a 5x weaker
    # reconstruction term.
    {"stage": "attgan-compact128l4-cpu-rec20", "forger": "attgan", "config": "compact128l4", "recipe": "cpu",
     "overrides": {"lambda_rec": 20.0}, "init_from_seed": "attgan-compact128l4-cpu-warm", "group": "attgan-rec20"},
    # That took the AttGAN from 39 to 56 % in one CPU-hour. The FPGAN's identity term (lambda_id 10 on
    # G(x, c_org)) pulls the same way and took it from 73 to 61 %: the same weights go on with it 5x weaker.
    {"stage": "fpgan-compact128-cpu-id2", "forger": "fpgan", "config": "compact128", "recipe": "cpu",
     "overrides": {"lambda_id": 2.0}, "init_from_seed": "fpgan-compact128-cpu", "group": "fpgan-id2"},
    # It stayed at 60-61 % for 1.3 CPU-hours: the weights it went on from had already given up their edits. The
    # FPGAN has the StarGAN's networks, so the next one starts again from the StarGAN's latest seed (74.6 %),
    # with the identity term 10x weaker than the paper's, to keep the edits while it learns to leave a face alone.
    {"stage": "fpgan-compact128-cpu-id1", "forger": "fpgan", "config": "compact128", "recipe": "cpu",
     "overrides": {"lambda_id": 1.0}, "init_from_seed": "stargan-compact128-cpu-warm", "group": "fpgan-id1"},
    # The AttGAN at lambda_rec 20 flattened at 56-60 % from 0.65 to 2.1 CPU-hours with weak edits (0.02-0.03):
    # its shipped weights go on with the reconstruction term halved again, level with the classification term.
    {"stage": "attgan-compact128l4-cpu-rec10", "forger": "attgan", "config": "compact128l4", "recipe": "cpu",
     "overrides": {"lambda_rec": 10.0}, "init_from_seed": "attgan-compact128l4-cpu-rec20", "group": "attgan-rec10"},
    # rec10 went on gaining (62 -> 63 %) with identity at 0.55 of a weak edit (0.025): the decoder rebuilds the
    # face from 16x16 features. The same weights with a second shortcut (32x32), starting as the same function.
    {"stage": "attgan-compact128l4s2-cpu-rec10", "forger": "attgan", "config": "compact128l4s2", "recipe": "cpu",
     "overrides": {"lambda_rec": 10.0}, "init_from_seed": "attgan-compact128l4-cpu-rec10", "group": "attgan-s2",
     "grow": True},
    # The StarGAN stayed at 76.0-76.3 % from 6.74 to 7.28 CPU-hours at lr 1e-4 (its moving average already
    # smooths the weights). The published recipe decays the rate in its second half: the same weights go on at
    # a rate a third as large.
    {"stage": "stargan-compact128-cpu-lr3e-5", "forger": "stargan", "config": "compact128", "recipe": "cpu",
     "overrides": {"lr": 3e-5}, "init_from_seed": "stargan-compact128-cpu-warm", "group": "stargan-lr"},
    # Its edits are read as the target 76 % of the time and change a face little more than asking for no edit
    # does (identity 0.72 of the edit). The classification term is what makes an edit reach its target and
    # stand out from the artefacts; with the non-saturating loss it is a small share of the generator's
    # gradient: the same weights go on with it 3x heavier (the critic's classifier likewise).
    {"stage": "stargan-compact128-cpu-cls3", "forger": "stargan", "config": "compact128", "recipe": "cpu",
     "overrides": {"lambda_cls": 3.0}, "init_from_seed": "stargan-compact128-cpu-warm", "group": "stargan-cls"},
    # That rose (76.3 -> 77.8 %) where the lower rate fell. The FPGAN from the StarGAN's seed (id1: 74.9 %) kept
    # its edits but not its faces (identity 0.72 of the edit); the same weights go on with the classification
    # term 3x heavier and the identity term twice id1's, to push both at once.
    {"stage": "fpgan-compact128-cpu-id2-cls3", "forger": "fpgan", "config": "compact128", "recipe": "cpu",
     "overrides": {"lambda_id": 2.0, "lambda_cls": 3.0}, "init_from_seed": "fpgan-compact128-cpu-id1",
     "group": "fpgan-cls"},
]
SEED = REPO / "checkpoints" / "campaign"
# The campaign's own selection score: cheap (200 validation faces), not the published measurement.
SELECT_FACES = 200


def default_state() -> Path:
    env = os.environ.get("VEIL_CAMPAIGN")
    return Path(env) if env else Path.home() / ".local" / "share" / "veil" / "campaign"


def read_status(state: Path) -> dict[str, Any]:
    for path in (state / "status.json", SEED / "status.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return {"stages": {}, "winners": {}}


def write_status(state: Path, status: dict[str, Any]) -> None:
    tmp = state / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=1))
    tmp.replace(state / "status.json")


def share(m: dict[str, Any]) -> float:
    """The identity error's share of the edit: how much of what an edit changes the forger changes anyway."""
    return float(m["identity_mse"]) / max(float(m["edit_strength"]), 1e-6)


def score(m: dict[str, Any]) -> float:
    """Higher is better: target accuracy, less the identity error's share of the edit (the goals' terms)."""
    return m.get("target_accuracy", 0.0) - 0.5 * max(0.0, share(m) - 1 / 3)


def make_trainer(stage: dict[str, Any], state: Path, status: dict[str, Any], data: Path | None) -> Any:
    from core.checkpoints import Manifest
    from core.train.forger import ForgerTrainer, TrainConfig

    cfg = TrainConfig.for_forger(stage["forger"], stage["config"], stage["recipe"], **stage.get("overrides", {}),
                                 run_dir=state / "runs" / stage["stage"], data_dir=data, threads=1)
    trainer = ForgerTrainer(cfg)
    if trainer.resume() or load_seed(trainer, SEED / f"{stage['stage']}.safetensors"):
        return trainer
    if stage.get("init_from_seed"):
        load_seed(trainer, SEED / f"{stage['init_from_seed']}.safetensors", counters=False,
                  grow=stage.get("grow", False))
    elif stage.get("init_from"):
        manifest = Manifest()
        entry = manifest.find(stage["init_from"])
        if entry is not None:
            trainer.warm_start(manifest.resolve(entry), None)
    elif stage.get("init_from_stage"):
        winner = status["winners"].get(stage["init_from_stage"])
        snaps = sorted((state / "runs" / winner / "snapshots").glob("*.safetensors")) if winner else []
        if snaps:
            trainer.warm_start(snaps[-1], None)
    return trainer


SEED_PARTS = ("G", "G_ema", "D")


def export_seed(state: Path, seed: Path) -> list[Path]:
    """Write every stage's state as fp16 weights (no optimiser moments) plus the status, for git."""
    import torch

    from core.checkpoints import save_weights

    written = []
    for state_path in sorted((state / "runs").glob("*/state.pt")):
        saved = torch.load(state_path, map_location="cpu", weights_only=True)
        tensors = {f"{part}.{k}": v for part in SEED_PARTS if part in saved for k, v in saved[part].items()}
        meta = {"stage": state_path.parent.name, "iteration": saved["iteration"],
                "cpu_seconds": round(float(saved["cpu_seconds"]), 1)}
        path = seed / f"{state_path.parent.name}.safetensors"
        save_weights(tensors, path, meta, half=True)
        written.append(path)
    seed.mkdir(parents=True, exist_ok=True)
    (seed / "status.json").write_text(json.dumps(read_status(state), indent=1) + "\n")
    return written


def load_seed(trainer: Any, path: Path, counters: bool = True, grow: bool = False) -> bool:
    """Resume a stage from its committed seed, when its own state is gone. Without ``counters`` the weights
    start a new stage (another recipe) with its own iteration count and CPU time; ``grow``: into a wider
    network (:func:`grown`), for a stage that says so in the plan."""
    from core.checkpoints import load_weights

    if not path.is_file():
        return False
    tensors, meta = load_weights(path)
    modules = {"G": trainer.G, "G_ema": trainer.G_ema, "D": trainer.D}
    for part, module in modules.items():
        if module is None:
            continue
        prefix = f"{part}."
        loaded = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(grown(module.state_dict(), loaded) if grow else loaded)
    if not counters:
        # the seed's own architecture (an FPGAN may start from the StarGAN's, whose networks it shares)
        source = next((s["forger"] for s in PLAN if s["stage"] == meta["stage"]), trainer.cfg.forger)
        trainer.cfg.extra["warm_start"] = {"from": meta["stage"], "forger": source,
                                           "iterations": int(meta["iteration"]), "restarted": True,
                                           "cpu_hours": round(float(meta["cpu_seconds"]) / 3600, 3)}
        print(f"campaign: started from {meta['stage']}'s seed ({meta['iteration']} it)", flush=True)
        return True
    trainer.iteration = int(meta["iteration"])
    trainer.cpu_seconds = float(meta["cpu_seconds"])
    print(f"campaign: {meta['stage']} resumed from the seed at {trainer.iteration} it", flush=True)
    return True


def grown(target: dict[str, Any], loaded: dict[str, Any]) -> dict[str, Any]:
    """``loaded`` fitted to ``target``'s shapes where a new stage's network has more input channels in a layer
    (the AttGAN's second shortcut): that weight goes into the leading slice of a zero tensor of the target's
    shape. The shortcut's channels are concatenated after the old ones (``AttGANGenerator.decode`` with one
    injection layer), so zero weights on them make the wider network compute the same function. The same keys,
    and only a convolution's input dimension may grow (dim 1 of a ``Conv2d`` weight, dim 0 of a
    ``ConvTranspose2d`` one; which of the two is not known here, so either, and nothing else)."""
    if set(target) != set(loaded):
        raise ValueError(f"the seed's keys differ: missing {sorted(set(target) - set(loaded))}, "
                         f"unexpected {sorted(set(loaded) - set(target))}")
    out = {}
    for key, want in target.items():
        have = loaded[key]
        if have.shape != want.shape:
            grows = [d for d, (h, w) in enumerate(zip(have.shape, want.shape, strict=False)) if h != w]
            wider = len(grows) == 1 and grows[0] <= 1 and have.shape[grows[0]] < want.shape[grows[0]]
            if have.dim() != 4 or want.dim() != 4 or not wider:
                raise ValueError(f"{key}: cannot grow {tuple(have.shape)} into {tuple(want.shape)}")
            wide = want.new_zeros(want.shape)
            wide[tuple(slice(0, h) for h in have.shape)] = have
            have = wide
        out[key] = have
    return out


def seed_start(stage: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Where a stage that went on from another stage's seed began: that stage, its iterations and CPU-hours then
    (recorded in the status when the stage started; else the seed as it is now, which may since have moved on)."""
    from core.checkpoints import load_weights

    source = stage.get("init_from_seed")
    if not source:
        return None
    began = (status or {}).get("stages", {}).get(stage["stage"], {}).get("started_from")
    if began and began.get("cpu_hours") is not None:
        return dict(began)
    path = SEED / f"{source}.safetensors"
    if not path.is_file():
        return None
    meta = load_weights(path)[1]
    return {"stage": source, "iterations": int(meta["iteration"]),
            "cpu_hours": round(float(meta["cpu_seconds"]) / 3600, 3)}


def origin(stage: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Where a stage's first iterations came from, for its card (a stage resumed from the seed lost it)."""
    from core.checkpoints import Manifest

    if stage.get("init_from_seed"):  # its own iteration count, from 0 (see load_seed)
        began = seed_start(stage, status)
        return None if began is None else {"from": began["stage"], "forger": planned(began["stage"])["forger"],
                                           "iterations": began["iterations"], "restarted": True}
    entry = Manifest().find(stage["init_from"]) if stage.get("init_from") else None
    if entry is None:
        return None
    return {"from": entry.name, "forger": entry.forger, "iterations": int(entry.info.get("iterations", 0))}


def ship(state: Path, stage_name: str, name: str) -> list[Any]:
    """Export a stage's generator (its moving average) and critic into checkpoints/ as the default ``name``,
    from its state, or from the seed when the state is gone. ``veil measure-forger NAME`` then writes its card."""
    import tempfile

    import torch

    from core.workflows import export_run

    stage = planned(stage_name)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = state / "runs" / stage_name
        if not (run_dir / "state.pt").is_file():
            if not (SEED / f"{stage_name}.safetensors").is_file():
                raise SystemExit(f"{stage_name} has neither a state nor a seed")
            run_dir = make_trainer(stage, Path(tmp), read_status(state), None).save().parent
        saved = torch.load(run_dir / "state.pt", map_location="cpu", weights_only=True)
        hardware = (f"CPU (2 cores, 1 torch thread at nice 10 beside other work), "
                    f"{float(saved['cpu_seconds']) / 3600:.2f} CPU-hours at 128 px")
        # The run's own record of where it started, when complete; else the plan's (a state resumed from the
        # seed lost it, and one written before records named the forger lacks that)
        own = saved["config"].get("extra", {}).get("warm_start")
        warm = own if own and "forger" in own else origin(stage, read_status(state))
        return export_run(run_dir, name, default=True, half=True, hardware=hardware, warm_start=warm)


def snapshot(trainer: Any, stage: str) -> Path:
    from core.checkpoints import save_weights

    cfg = trainer.cfg
    path = cfg.run_dir / "snapshots" / f"{trainer.iteration:07d}.safetensors"
    meta = {"forger": cfg.forger, "config": cfg.model_config, "role": "generator", "stage": stage,
            "recipe": cfg.recipe, "iterations": trainer.iteration, "cpu_seconds": round(trainer.cpu_seconds, 1)}
    save_weights(trainer.G_export.state_dict(), path, meta, half=False)
    return path


def measure(trainer: Any, data: Path | None) -> dict[str, Any]:
    import torch

    from core.classifier import load_judge
    from core.data import FacePack, default_celeba_dir
    from core.forger_eval import measure_forger

    root = data or default_celeba_dir()
    val = FacePack.load(root, "val", trainer.forger.image_size, trainer.cfg.run_dir.parent / "cache")
    x, c = val[torch.arange(SELECT_FACES)]
    G = trainer.G_export
    was_training = G.training
    G.eval()
    try:
        forger = trainer.forger
        generator = forger.generator
        forger.generator = G
        return measure_forger(forger, x, c, load_judge())
    finally:
        forger.generator = generator
        G.train(was_training)


# Each architecture's turn, in CPU-hours of its training stage, before the next one starts (in plan order): the
# default StarGAN first, then the FPGAN warm-started from it, then the AttGAN. Once every architecture has had
# its turn, the architecture furthest from the goals (the lowest score of its best stage) trains next, on that
# stage, a chunk at a time. The warm AttGAN's turn was cut at its plateau, for the weaker reconstruction term, and
# so was the FPGAN-id2's (60-61 % from 0.64 to 1.42 CPU-hours; its committed seed is the 0.64 snapshot).
# The wider AttGAN's turn ended at its committed seed (0.97 CPU-hours): from there to 1.52 it measured 64-65 %, the
# level it had fallen back to from 69 % at 268 iterations.
# The StarGAN at a third of the learning rate read 76.0, 75.8, 75.5, 75.2 % over 0.52 CPU-hours (two sessions,
# its state not kept): its turn is over; the heavier classification term (77.2, 77.8 %) goes on instead.
# That read 77.8, 77.9, 77.4, 77.4 % from 0.37 to 0.76 CPU-hours: its weights at 299 iterations ship as the
# default StarGAN (74.4 % on 1,000 faces); its turn ended at its committed seed (0.37), its later state not kept.
# The FPGAN alike read 75.1, 75.2, 75.4, 75.1 % from 0.24 to 0.84 CPU-hours (identity 0.71-0.70 of the edit): its
# turn ended at its committed seed (0.43).
TURN_HOURS = {"stargan": 6.0, "fpgan": 4.0, "attgan": 3.1, "attgan-rec20": 1.0, "fpgan-id2": 0.6, "fpgan-id1": 0.5,
              "attgan-rec10": 1.0, "attgan-s2": 0.9, "stargan-lr": 0.0,
              "stargan-cls": 0.36, "fpgan-cls": 0.43}


def choose(state: Path, status: dict[str, Any], busy: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """The next stage to train: a pilot stage with the least CPU time, else the first architecture whose turn
    is not over (see :data:`TURN_HOURS`), else the unfinished stage with the lowest score. Stages in ``busy``
    (another process trains them, :func:`claimed`) are passed over."""
    done = status["stages"]
    turns_over = []
    for group in dict.fromkeys(s["group"] for s in PLAN):
        stages = [s for s in PLAN if s["group"] == group and s["stage"] not in busy]
        pilots = [s for s in stages if "pilot_hours" in s]
        behind = [s for s in pilots if done.get(s["stage"], {}).get("cpu_seconds", 0) < 3600 * s["pilot_hours"]]
        if behind and group not in status["winners"]:  # a decided group stays decided
            return min(behind, key=lambda s: done.get(s["stage"], {}).get("cpu_seconds", 0))
        if pilots and group not in status["winners"]:
            best = max(pilots, key=lambda s: done.get(s["stage"], {}).get("score", -1.0))
            status["winners"][group] = best["stage"]
            write_status(state, status)
        winner = status["winners"].get(group)
        candidates = [s for s in stages if s["stage"] == winner] if pilots else stages
        stage = next((s for s in candidates if not done.get(s["stage"], {}).get("finished")), None)
        if stage is None:
            continue
        if done.get(stage["stage"], {}).get("cpu_seconds", 0) < 3600 * TURN_HOURS.get(group, 0.0):
            return stage
        turns_over.append(stage)
    leaders: dict[str, dict[str, Any]] = {}  # each architecture's best-scored stage
    for stage in sorted(turns_over, key=lambda s: done.get(s["stage"], {}).get("score", -1.0)):
        leaders[stage["forger"]] = stage
    return min(leaders.values(), key=lambda s: done.get(s["stage"], {}).get("score", -1.0), default=None)


@contextlib.contextmanager
def status_lock(state: Path) -> Iterator[None]:
    """Held while a campaign process reads and rewrites the status: two may train side by side (``--only``)."""
    with open(state / "status.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _claim_file(state: Path, name: str) -> Path:
    return state / "runs" / f"{name}.claim"


def _flock_now(fh: Any, operation: int) -> bool:
    """Take an flock without waiting; False when another process holds it."""
    try:
        fcntl.flock(fh, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def claim(state: Path, name: str) -> Iterator[None]:
    """Held by an ``--only`` process while it trains ``name``, so that the scheduled process does not train
    the same stage at the same time (each would overwrite the other's state). Released when the process ends,
    however it ends (an flock)."""
    path = _claim_file(state, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        if not _flock_now(fh, fcntl.LOCK_EX):
            raise SystemExit(f"another campaign process already trains {name}")
        yield


def claimed(state: Path) -> frozenset[str]:
    """The stages another process holds a :func:`claim` on."""
    busy = set()
    for stage in PLAN:
        path = _claim_file(state, stage["stage"])
        if not path.is_file():
            continue
        with open(path) as fh:
            if not _flock_now(fh, fcntl.LOCK_SH):
                busy.add(stage["stage"])
    return frozenset(busy)


def planned(name: str) -> dict[str, Any]:
    stage = next((s for s in PLAN if s["stage"] == name), None)
    if stage is None:
        raise SystemExit(f"no stage {name!r} in the plan; known: {', '.join(s['stage'] for s in PLAN)}")
    return stage


def run(state: Path, data: Path | None, chunk_minutes: float, snapshot_minutes: float, hours: float | None,
        only: str | None = None) -> None:
    """Train chunk after chunk: the stage :func:`choose` picks, or only the stage ``only`` (a second process
    beside the scheduled one, on the other core)."""
    import torch

    torch.set_num_threads(1)
    stop = {"now": False}

    def request_stop(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    start = time.monotonic()
    trainers: dict[str, Any] = {}
    while not stop["now"] and (hours is None or time.monotonic() - start < hours * 3600):
        with status_lock(state):
            status = read_status(state)
            stage = planned(only) if only else choose(state, status, claimed(state))
        if stage is None:
            print("campaign: every stage finished", flush=True)
            return
        name = stage["stage"]
        trainer = trainers.get(name) or make_trainer(stage, state, status, data)
        trainers[name] = trainer
        rec = status["stages"].setdefault(name, {})
        warm = trainer.cfg.extra.get("warm_start") or {}
        if warm.get("restarted") and "started_from" not in rec:
            # where its hours start on the recipe curve: the source's seed moves on after this stage began
            rec["started_from"] = {"stage": warm["from"], "iterations": warm["iterations"],
                                   "cpu_hours": warm.get("cpu_hours")}  # None in a run saved before it was kept
        last_snap = rec.get("snapshot_cpu_seconds", 0.0)
        trainer.stop_requested = False
        # The trainer's own handlers take SIGINT/SIGTERM during a chunk and save; ours see the flag after.
        before = trainer.iteration
        trainer.train(max_seconds=chunk_minutes * 60, progress=False)
        if trainer.stop_requested:
            stop["now"] = True
        rec.update(iteration=trainer.iteration, cpu_seconds=round(trainer.cpu_seconds, 1),
                   finished=trainer.iteration >= trainer.cfg.iters)
        print(f"campaign: {name} {before} -> {trainer.iteration} it, {trainer.cpu_seconds / 3600:.2f} CPU-h",
              flush=True)
        if trainer.cpu_seconds - last_snap >= snapshot_minutes * 60 or stop["now"]:
            path = snapshot(trainer, name)
            m = measure(trainer, data)
            rec.update(snapshot=path.name, snapshot_cpu_seconds=round(trainer.cpu_seconds, 1), score=score(m),
                       measured={k: m[k] for k in ("edit_strength", "identity_mse", "reconstruction_mse",
                                                   "target_accuracy")})
            print(f"campaign: {name} snapshot {path.name}: {rec['measured']} score {rec['score']:.3f}", flush=True)
        with status_lock(state):  # another process may have written its own stage's record meanwhile
            status = read_status(state)
            status["stages"][name] = rec
            write_status(state, status)


def background() -> None:
    """Yield the CPU to any other work: a high nice value, and, for a campaign that leads its own session
    (started with setsid), the same for the session's scheduling autogroup. Linux shares the CPU between
    autogroups (one per session) before it looks at nice values, so such a campaign held a full share against
    the tests and benchmarks beside it, whatever its nice value (measured: two niced campaign processes took
    70 % of a core each against 30 % for each of two benchmarks; after this, 2 % against 97 %). Started from
    a shell, the campaign shares the shell's autogroup, whose priority it leaves alone."""
    with contextlib.suppress(OSError):
        os.nice(10)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):
            Path("/proc/self/autogroup").write_text("19")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state", type=Path, default=default_state())
    ap.add_argument("--data", type=Path, default=None, help="CelebA root (default: the shared dataset)")
    ap.add_argument("--chunk-minutes", type=float, default=10.0)
    ap.add_argument("--snapshot-minutes", type=float, default=10.0, help="CPU minutes between snapshots")
    ap.add_argument("--hours", type=float, default=None, help="stop after this much wall time")
    ap.add_argument("--status", action="store_true", help="print where each stage stands and exit")
    ap.add_argument("--export-seed", action="store_true", help=f"write the seed ({SEED.relative_to(REPO)}/) and exit")
    ap.add_argument("--only", metavar="STAGE", help="train only this stage (e.g. beside the scheduled campaign)")
    ap.add_argument("--ship", nargs=2, metavar=("STAGE", "NAME"),
                    help="export STAGE into checkpoints/ as the default NAME (then: veil measure-forger NAME)")
    args = ap.parse_args()
    args.state.mkdir(parents=True, exist_ok=True)
    if args.ship:
        for entry in ship(args.state, *args.ship):
            print(f"shipped: checkpoints/{entry.file}")
        return
    if args.status:
        print(json.dumps(read_status(args.state), indent=1))
        return
    if args.export_seed:
        for path in export_seed(args.state, SEED):
            print(f"seed: {path.relative_to(REPO)} ({path.stat().st_size / 2**20:.1f} MiB)")
        return
    background()
    if args.only:
        planned(args.only)  # an unknown stage fails before any work
        with claim(args.state, args.only):
            run(args.state, args.data, args.chunk_minutes, args.snapshot_minutes, args.hours, args.only)
        return
    run(args.state, args.data, args.chunk_minutes, args.snapshot_minutes, args.hours)


if __name__ == "__main__":
    main()
