"""Resumable trainer for the one-pass generator methods (``retentive``, ``dwt-chroma``, ``initiative``) on
CelebA faces.

The forgers are frozen (shipped weights by default, any checkpoint, or - for smoke tests only - random
weights); only the generator learns, end to end through the method's own
:meth:`~core.methods.one_pass.GeneratorMethod.training_loss` over every single-attribute target edit of each
face (or a random subset of ``targets_per_step`` of them per iteration, for CPU runs). Adam, optional
linear learning-rate decay, optional EoT (random JPEG / blur / resize between generator and forgers).
A method with an auxiliary network (``initiative``'s surrogate forger) has it updated by its own Adam
(``surrogate_lr``) before every generator step, alternating the two; the generator waits while the
method says so (a warm-up).

A run directory holds ``state.pt`` (generator, optimiser, RNG states, data order, iteration, the
random forgers if any; written atomically), ``log.jsonl`` (losses; validation numbers with ``"val"``),
``samples/<iter>.png`` (validation grids: x, x_adv, 10x perturbation, edits of x, edits of x_adv)
and the data pack cache in its parent. :func:`export_generator` writes the generator into
``checkpoints/`` (safetensors + a ``generator-method`` manifest entry + a model card).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.checkpoints import CheckpointError, Manifest, ManifestEntry, checkpoints_dir, save_weights
from core.data import FacePack
from core.device import resolve_device
from core.evaluate import measure_batch, summarize
from core.forgers import Forger, create_forger
from core.image import make_grid, save_image
from core.methods import create_method, method_class
from core.methods.one_pass import ROLE, GeneratorMethod
from core.targets import targets_for
from core.train.loop import ResumableTrainer
from core.transforms import EoT

# Per-method recipes (GPU defaults; CPU smoke runs override batch size and targets per step).
RECIPES: dict[str, dict[str, Any]] = {
    "retentive": dict(batch_size=16, lr=1e-4, iters=20_000),
    "dwt-chroma": dict(batch_size=16, lr=1e-4, iters=20_000),
    "initiative": dict(batch_size=16, lr=1e-4, iters=20_000),
}


@dataclass
class GeneratorTrainConfig:
    method: str = "retentive"
    forgers: list[str] = field(default_factory=lambda: ["stargan"])
    forger_checkpoints: list[str | None] = field(default_factory=list)  # one per forger, None = shipped
    forger_random: bool = False  # random frozen forgers: smoke tests only, never for real weights
    model_config: str = "compact64"  # generator config (and the random forgers' config)
    run_dir: Path = Path("runs/retentive-stargan-compact64")
    data_dir: Path | None = None
    iters: int = 20_000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    decay_from: float = 1.0  # linear decay to 0 over the last (1 - decay_from) of the iterations; 1 = none
    eps: float | None = None  # None: the method's default budget
    objective: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # the method's option_defaults overrides
    eot: list[str] = field(default_factory=list)  # e.g. ["identity", "jpeg", "blur", "resize"]
    targets_per_step: int | None = None  # None: every target edit of every face, each iteration
    ckpt_every: int = 500
    sample_every: int = 500
    log_every: int = 25
    val_faces: int = 8
    seed: int = 0
    threads: int | None = None
    limit: int | None = None  # use only the first N training faces (tests)
    device: str = "cpu"
    init_from: str | None = None  # a generator's weights (file or manifest entry) to start from, not random ones

    @classmethod
    def for_method(cls, method: str, forgers: list[str], model_config: str, **overrides: Any) -> GeneratorTrainConfig:
        if method not in RECIPES:
            raise ValueError(f"unknown generator method {method!r}; known: {', '.join(sorted(RECIPES))}")
        if not forgers:
            raise ValueError("train against at least one forger")
        recipe = dict(RECIPES[method])
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        run_dir = recipe.pop("run_dir", None) or Path("runs") / f"{method}-{'-'.join(forgers)}-{model_config}"
        return cls(method=method, forgers=list(forgers), model_config=model_config, run_dir=Path(run_dir), **recipe)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        out["data_dir"] = str(self.data_dir) if self.data_dir else None
        out["betas"] = list(self.betas)
        return out


def build_forgers(cfg: GeneratorTrainConfig) -> list[Forger]:
    """The frozen forgers to train against (random ones seeded by ``cfg.seed``, reproducibly)."""
    checkpoints = list(cfg.forger_checkpoints) + [None] * (len(cfg.forgers) - len(cfg.forger_checkpoints))
    if len(checkpoints) != len(cfg.forgers):
        raise ValueError(f"{len(cfg.forger_checkpoints)} forger checkpoints for {len(cfg.forgers)} forgers")
    forgers = []
    for i, (name, ckpt) in enumerate(zip(cfg.forgers, checkpoints, strict=True)):
        if cfg.forger_random:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed * 1000 + i + 1)
                forgers.append(create_forger(name, config=cfg.model_config, pretrained=False))
        else:
            forgers.append(create_forger(name, ckpt))
    return forgers


class GeneratorTrainer(ResumableTrainer):
    def __init__(self, cfg: GeneratorTrainConfig) -> None:
        self.cfg = cfg
        self.name = cfg.method
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cls = method_class(cfg.method)
        if not getattr(cls, "one_pass", False):
            raise ValueError(f"{cfg.method!r} is not a generator method")
        self.device = torch.device(resolve_device(cfg.device))
        self.forgers = [f.to(self.device) for f in build_forgers(cfg)]
        torch.manual_seed(cfg.seed)
        options: dict[str, Any] = dict(cfg.options)
        if cfg.eot:
            options["eot"] = EoT.from_names(cfg.eot)
        # A warm start takes the weights (and, unless given, the budget, objective and options) of init_from.
        method = create_method(cfg.method, self.forgers, pretrained=cfg.init_from is not None,
                               checkpoint=cfg.init_from, config=cfg.model_config, eps=cfg.eps,
                               objective=cfg.objective, seed=cfg.seed, **options)
        assert isinstance(method, GeneratorMethod)
        self.method = method
        self.net = method.net.to(self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), cfg.lr, betas=cfg.betas)
        self.aux = method.auxiliary()
        self.aux_opt = auxiliary_optimizer(method, self.device)
        self.iteration = 0
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)  # noise maps, EoT draws, target subsets
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.stop_requested = False
        self.last_val: dict[str, Any] = {}
        self.train_data: FacePack | None = None
        self.val_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def image_size(self) -> int:
        return int(self.method.config["image_size"])

    # ----- data -------------------------------------------------------------------------------------
    def load_data(self) -> None:
        from core.data import default_celeba_dir

        root = self.cfg.data_dir or default_celeba_dir()
        cache = self.cfg.run_dir.parent / "cache"
        self.train_data = FacePack.load(root, "train", self.image_size, cache, self.cfg.limit)
        val = FacePack.load(root, "val", self.image_size, cache, 64)
        self.val_batch = val[torch.arange(min(self.cfg.val_faces, len(val)))]

    def targets(self, x: torch.Tensor, c_org: torch.Tensor) -> torch.Tensor:
        """(N, T, A) target edits of the batch; a random subset of ``targets_per_step`` edits if set."""
        targets = targets_for(x, self.method.attributes, c_org)
        k = self.cfg.targets_per_step
        if k is not None and k < targets.shape[1]:
            cols = torch.randperm(targets.shape[1], generator=self.noise_gen)[:k]
            targets = targets[:, cols.to(targets.device)]
        return targets

    # ----- one iteration ----------------------------------------------------------------------------
    def step(self, x: torch.Tensor, c_org: torch.Tensor) -> dict[str, float]:
        lr = self.set_lr(self.opt)
        logs = alternating_step(self.method, x, self.targets(x, c_org), self.noise_gen, self.opt, self.aux_opt,
                                self.iteration)
        logs["lr"] = lr
        return logs

    # ----- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "config": self.cfg.to_json(),
            **self.loop_state(),
            "net": self.net.state_dict(),
            "opt": self.opt.state_dict(),
            "noise_gen": self.noise_gen.get_state(),
            "method_config": self.method.config,
            "options": {k: v for k, v in self.method.options.items()},
            "eps": self.method.eps,
            "objective": self.method.objective,
            "last_val": json.dumps(self.last_val),
            "forger_sources": [f.source for f in self.forgers],
        }
        if self.cfg.forger_random:
            state["random_forgers"] = [f.generator.state_dict() for f in self.forgers]
        if self.aux is not None and self.aux_opt is not None:
            state["aux"] = self.aux.state_dict()
            state["aux_opt"] = self.aux_opt.state_dict()
        return state

    def resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        saved = state["config"]
        # a warm-started run's budget, objective and options came from its source: resumed without it, they would not
        for key in ("method", "forgers", "model_config", "init_from"):
            if saved.get(key) != getattr(self.cfg, key):
                raise ValueError(f"{self.state_path} was trained with {key}={saved.get(key)!r}, not "
                                 f"{getattr(self.cfg, key)!r}; use another --run-dir")
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        if self.aux is not None and self.aux_opt is not None:
            self.aux.load_state_dict(state["aux"])
            self.aux_opt.load_state_dict(state["aux_opt"])
        for forger, weights in zip(self.forgers, state.get("random_forgers", []), strict=False):
            forger.generator.load_state_dict(weights)
        self.load_loop_state(state)
        self.noise_gen.set_state(state["noise_gen"])
        self.last_val = json.loads(state.get("last_val", "{}"))
        return True

    # ----- outputs ----------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Protect the validation faces as a user would (8-bit output) and measure them, next to the
        uniform noise of the same budget; writes the sample grid. Uses no global random numbers."""
        if self.val_batch is None:
            return {}
        x, c = (t.to(self.device) for t in self.val_batch)
        self.net.eval()
        try:
            x_adv, tally = measure_batch(self.method, x, c)
            summary = summarize(tally, self.method, self.forgers, ["clean"])
            steps = self.method.steps
            self.method.steps = 0  # the uniform-noise baseline over the same budget
            try:
                _, noise_tally = measure_batch(self.method, x, c)
            finally:
                self.method.steps = steps
            noise = summarize(noise_tally, self.method, self.forgers, ["clean"])
        finally:
            self.net.train()
        record: dict[str, Any] = {"psnr": summary["psnr"], "ssim": summary["ssim"], "lpips": summary["lpips"]}
        for row, base in zip(summary["rows"], noise["rows"], strict=True):
            name = row["forger"]
            record[f"{name}/success_rate"] = row["success_rate"]
            record[f"{name}/distortion"] = row["distortion"]
            record[f"{name}/nullification"] = row["nullification"]
            record[f"{name}/noise_distortion"] = base["distortion"]
            record[f"{name}/noise_nullification"] = base["nullification"]
            record[f"{name}/edit_strength"] = row["edit_strength"]
        record.update(self.method.validation_extras(x, x_adv, targets_for(x, self.method.attributes, c)))
        self._sample(x, x_adv, c)
        self.last_val = {"iter": self.iteration, **record}
        return record

    def _sample(self, x: torch.Tensor, x_adv: torch.Tensor, c: torch.Tensor) -> Path:
        forger = self.forgers[0]
        targets = targets_for(x, self.method.attributes, c)
        rows = []
        for i in range(x.shape[0]):
            t = targets[i, :2]
            clean = forger(x[i : i + 1].expand(len(t), -1, -1, -1), t)
            adv = forger(x_adv[i : i + 1].expand(len(t), -1, -1, -1), t)
            amplified = ((x_adv[i] - x[i]) * 10).clamp(-1, 1)
            rows.append([x[i], x_adv[i], amplified, *clean, *adv])
        path = self.cfg.run_dir / "samples" / f"{self.iteration:07d}.png"
        return save_image(make_grid(rows), path)

    # ----- loop hooks -------------------------------------------------------------------------------
    def set_train_mode(self) -> None:
        self.net.train().requires_grad_(True)

    def on_sample(self) -> None:
        self.log({"iter": self.iteration, "val": self.validate()})


def auxiliary_optimizer(method: GeneratorMethod, device: torch.device) -> torch.optim.Optimizer | None:
    """Adam (``surrogate_lr``) over the method's auxiliary network, moved to ``device``; None without one."""
    aux = method.auxiliary()
    if aux is None:
        return None
    return torch.optim.Adam(aux.to(device).parameters(), float(method.options["surrogate_lr"]), betas=(0.5, 0.999))


def alternating_step(
    method: GeneratorMethod, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator,
    opt: torch.optim.Optimizer, aux_opt: torch.optim.Optimizer | None, iteration: int,
) -> dict[str, float]:
    """One iteration: the auxiliary network's step (if any), then the generator's (unless it waits)."""
    logs: dict[str, float] = {}
    if aux_opt is not None:
        aux_loss, logs = method.auxiliary_loss(x, targets, gen)
        aux_opt.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_opt.step()
    if method.generator_active(iteration):
        loss, gen_logs = method.training_loss(x, targets, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        logs.update(gen_logs)
    return logs


def fit_generator(
    method: GeneratorMethod, x: torch.Tensor, targets: torch.Tensor | None = None, iters: int = 30,
    lr: float = 3e-2, seed: int = 0,
) -> list[float]:
    """Train ``method``'s generator on one fixed batch (tests and quick experiments, not a recipe), with
    its auxiliary network alternating as in the trainer; returns the generator's loss of every iteration
    it learned at and leaves the generator frozen for inference."""
    targets = targets if targets is not None else targets_for(x, method.attributes)
    gen = torch.Generator().manual_seed(seed)
    net = method.net.to(x.device).train().requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr)
    aux_opt = auxiliary_optimizer(method, x.device)
    losses = []
    for it in range(iters):
        logs = alternating_step(method, x, targets, gen, opt, aux_opt, it)
        if "loss" in logs:
            losses.append(logs["loss"])
    net.requires_grad_(False).eval()
    return losses


def train_generator(cfg: GeneratorTrainConfig, max_minutes: float | None = None, progress: bool = True) -> int:
    """Resume ``cfg.run_dir`` if it holds a state, train, save; returns the iteration reached."""
    from core.data import celeba_available, default_celeba_dir

    root = cfg.data_dir or default_celeba_dir()
    if not celeba_available(root):
        where = f"in {root}" if cfg.data_dir else "(pass --data or set VEIL_CELEBA)"
        raise FileNotFoundError(f"no CelebA layout (list_attr_celeba.txt, img_align_celeba/) {where}")
    trainer = GeneratorTrainer(cfg)
    trainer.resume()
    iteration = trainer.train(max_seconds=max_minutes * 60 if max_minutes is not None else None, progress=progress)
    if trainer.last_val.get("iter") != iteration:
        trainer.log({"iter": iteration, "val": trainer.validate()})
        trainer.save()
    return iteration


def export_generator(
    run_dir: Path, name: str, default: bool = True, half: bool = False, hardware: str = "CPU"
) -> ManifestEntry:
    """Write a run's generator into ``checkpoints/<name>.safetensors``, list it in the manifest (role
    ``generator-method``, ``forger`` = the method) and write its model card ``checkpoints/<name>.md``."""
    state_path = run_dir / "state.pt"
    if not state_path.is_file():
        raise CheckpointError(f"no training state in {run_dir}")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    cfg = state["config"]
    iterations = int(state["iteration"])
    if cfg.get("forger_random"):
        raise CheckpointError(f"{run_dir} was trained against random forgers (a smoke test); it is not exported")
    method_cfg = dict(state["method_config"])
    last_val = json.loads(state.get("last_val", "{}"))
    meta = {
        "method": cfg["method"], "role": ROLE, "config": method_cfg, "eps": state["eps"],
        "objective": state["objective"], "options": state["options"], "forgers": cfg["forgers"],
        "forger_weights": [Path(s).name for s in state.get("forger_sources", [])], "iterations": iterations,
    }
    file = f"{name}.safetensors"
    sha = save_weights(state["net"], checkpoints_dir() / file, meta, half=half)
    entry = ManifestEntry(
        name=name, forger=cfg["method"], file=file, config=method_cfg.get("config_name", method_cfg), sha256=sha,
        role=ROLE, default=default,
        info={
            "architecture": f"{cfg['method']} perturbation generator (U-Net, width {method_cfg['width']}, "
                            f"depth {method_cfg['depth']})",
            "method": cfg["method"],
            "forgers": cfg["forgers"],
            "forger_weights": [Path(s).name for s in state.get("forger_sources", [])],
            "image_size": method_cfg["image_size"],
            "eps": state["eps"],
            "objective": state["objective"],
            "data": "CelebA train split (aligned faces), targets: every single-attribute edit of CelebA-5",
            "iterations": iterations,
            "batch_size": cfg["batch_size"],
            "hardware": hardware,
            "dtype": "float16" if half else "float32",
            "exported": dt.date.today().isoformat(),
            "licence": "CelebA: non-commercial research use only",
            "recipe": {k: cfg[k] for k in ("lr", "eot", "targets_per_step")} | {"options": state["options"]}
                      | ({"init_from": cfg["init_from"]} if cfg.get("init_from") else {}),
            "metrics": {k: v for k, v in last_val.items() if k != "iter" and isinstance(v, int | float)},
        },
    )
    manifest = Manifest()
    manifest.upsert(entry)
    manifest.save()
    write_generator_card(entry)
    return entry


def write_generator_card(entry: ManifestEntry) -> Path:
    """``checkpoints/<name>.md``: what the generator is, how it was trained, what it measured."""
    info = entry.info
    numbers = "\n".join(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
                        for k, v in info.get("metrics", {}).items()) or "| (not measured yet) | |"
    recipe = ", ".join(f"{k} {v}" for k, v in info.get("recipe", {}).items())
    options = info.get("recipe", {}).get("options", {})
    black_box = ""
    if "surrogate" in options:  # initiative: the targets were queried, never differentiated through
        black_box = (f"\n- Black box: the target forgers were only queried for their edits (no weights, no "
                     f"gradients); a surrogate `{options['surrogate']}` ({options.get('surrogate_config')}), trained "
                     f"from those answers alone, was what the generator learned to break "
                     f"({options.get('warmup')} imitation-only warm-up iterations, then alternating).")
    card = f"""# {entry.name}

The perturbation generator of Veil's one-pass protection method `{entry.forger}` (`{entry.file}`,
config `{entry.config}`, {info.get("architecture")}): one forward pass protects a face against
{", ".join(info.get("forgers", []))} (weights {", ".join(info.get("forger_weights", [])) or "?"}), budget eps
{info.get("eps")}, objective {info.get("objective")}.

## Training
- Data: {info.get("data")}; {info.get("image_size")} px, [-1, 1]; forgers frozen.
- Recipe: {recipe}.
- Iterations: {info.get("iterations")} (batch {info.get("batch_size")}) on {info.get("hardware")}; stored as
  {info.get("dtype")}; sha256 `{entry.sha256}`.{black_box}

## Measured (the trainer's last validation, on its first few validation faces, 8-bit output; `noise_*` is
uniform noise of the same budget; `veil eval` measures more faces, conditions and forgers: see the
tables in `benchmarks/results/`)
| number | value |
|---|---|
{numbers}

## Intended use and limits
- Intended use: protecting one's own photos against face-attribute editing, and research on such
  protections.
- Licence: trained on CelebA, which is available for non-commercial research purposes only; these
  weights carry that restriction.
- Limits: trained against the forgers named above at {info.get("image_size")} px on aligned, centred
  celebrity faces; against other editors, framings or resolutions it transfers less well than an
  iterative attack computed for them (`veil eval` measures it).
"""
    path = checkpoints_dir() / f"{entry.name}.md"
    path.write_text(card)
    return path
