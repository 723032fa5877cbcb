"""Resumable trainer for the forgers (StarGAN, Fixed-Point GAN, AttGAN) on CelebA.

Recipes:
- StarGAN (Choi et al. 2018): WGAN-GP, lambda_cls 1, lambda_rec 10, lambda_gp 10, n_critic 5,
  Adam 1e-4 (0.5, 0.999), batch 16, linear learning-rate decay over the second half.
- Fixed-Point GAN (Siddiquee et al. 2019): StarGAN plus the conditional identity loss
  ``lambda_id * |G(x, c_org) - x|_1`` (lambda_id 10), and the adversarial/classification terms on the
  identity translation too.
- AttGAN (He et al. 2019): WGAN-GP, lambda_rec 100 on G(x, c_org), lambda_cls_g 10, lambda_cls_d 1,
  n_critic 5, Adam 2e-4 (0.5, 0.999), batch 32.

The ``cpu`` variant of each recipe learns more per CPU-hour (measured: ``benchmarks/forger_recipes.py``):
one critic step per generator step with a non-saturating loss and a lazy R1 penalty on real faces (StarGAN v2,
StyleGAN2) instead of five WGAN-GP critic steps with a double backward each, and an exponential moving average
of the generator (the exported weights). Architectures, loss weights and batch sizes are the papers'.
(channels_last memory was measured 8 % slower on this CPU at compact128, so it is not an option.)

A run directory holds ``state.pt`` (models, optimisers, RNG, data order, iteration; written atomically),
``log.jsonl`` (losses), ``samples/<iter>.png`` (validation grids) and the data pack cache.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.data import FacePack
from core.device import resolve_device
from core.forgers import create_discriminator, create_forger
from core.image import make_grid, save_image
from core.train.loop import ResumableTrainer

RECIPES: dict[str, dict[str, Any]] = {
    "stargan": dict(batch_size=16, lr=1e-4, n_critic=5, lambda_cls=1.0, lambda_rec=10.0, lambda_gp=10.0,
                    lambda_id=0.0, iters=200_000),
    "fpgan": dict(batch_size=16, lr=1e-4, n_critic=5, lambda_cls=1.0, lambda_rec=10.0, lambda_gp=10.0,
                  lambda_id=10.0, iters=200_000),
    "attgan": dict(batch_size=32, lr=2e-4, n_critic=5, lambda_cls=10.0, lambda_rec=100.0, lambda_gp=10.0,
                   lambda_id=0.0, lambda_cls_d=1.0, iters=200_000),
}

# Recipe variants, applied over a forger's recipe: "published" is the papers' own.
VARIANTS: dict[str, dict[str, Any]] = {
    "published": {},
    "cpu": dict(adv_loss="ns", n_critic=1, lambda_gp=0.0, r1_gamma=1.0, r1_every=16, ema_beta=0.999,
                betas=(0.0, 0.99)),
}
ADV_LOSSES = ("wgan-gp", "ns", "hinge")


@dataclass
class TrainConfig:
    forger: str = "stargan"
    model_config: str = "compact64"
    run_dir: Path = Path("runs/stargan-compact64")
    data_dir: Path | None = None
    iters: int = 200_000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    n_critic: int = 5
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    lambda_id: float = 0.0
    lambda_cls_d: float = 1.0
    recipe: str = "published"
    adv_loss: str = "wgan-gp"  # wgan-gp | ns (non-saturating) | hinge
    r1_gamma: float = 0.0  # R1 penalty on real faces (ns/hinge), applied every r1_every critic steps
    r1_every: int = 16
    ema_beta: float = 0.0  # exponential moving average of the generator; 0: none
    decay_from: float = 0.5  # linear decay to 0 over the last (1 - decay_from) of the iterations
    ckpt_every: int = 1000
    sample_every: int = 1000
    log_every: int = 50
    seed: int = 0
    threads: int | None = None
    limit: int | None = None  # use only the first N training faces (tests)
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_forger(cls, forger: str, model_config: str, recipe_name: str = "published",
                   **overrides: Any) -> TrainConfig:
        if forger not in RECIPES:
            raise ValueError(f"unknown forger {forger!r}; known: {', '.join(sorted(RECIPES))}")
        if recipe_name not in VARIANTS:
            raise ValueError(f"unknown recipe {recipe_name!r}; known: {', '.join(VARIANTS)}")
        recipe = dict(RECIPES[forger], **VARIANTS[recipe_name], recipe=recipe_name)
        recipe.update({k: v for k, v in overrides.items() if v is not None})
        run_dir = recipe.pop("run_dir", None) or Path("runs") / f"{forger}-{model_config}"
        return cls(forger=forger, model_config=model_config, run_dir=Path(run_dir), **recipe)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["run_dir"] = str(self.run_dir)
        out["data_dir"] = str(self.data_dir) if self.data_dir else None
        return out


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: (||grad_x D(x_hat)||_2 - 1)^2 on random interpolates."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(x_hat)[0]
    grad = torch.autograd.grad(out.sum(), x_hat, create_graph=True)[0]
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(out_real: torch.Tensor, x_real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): mean squared gradient norm of the critic at real faces."""
    (grad,) = torch.autograd.grad(out_real.sum(), x_real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def critic_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def generator_adv_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    # Hinge and WGAN generators both maximise the critic's score; non-saturating uses -log D.
    return F.softplus(-fake).mean() if kind == "ns" else -fake.mean()


def _cls_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # StarGAN sums over attributes and averages over the batch.
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / logits.shape[0]


class ForgerTrainer(ResumableTrainer):
    progress_keys = ("d_real", "g_rec", "g_cls")

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.name = cfg.forger
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(resolve_device(cfg.device))
        torch.manual_seed(cfg.seed)
        self.forger = create_forger(cfg.forger, config=cfg.model_config, pretrained=False, frozen=False)
        if cfg.adv_loss not in ADV_LOSSES:
            raise ValueError(f"unknown adversarial loss {cfg.adv_loss!r}; known: {', '.join(ADV_LOSSES)}")
        self.G = self.forger.generator.to(self.device)
        self.D = create_discriminator(cfg.forger, config=cfg.model_config, pretrained=False).to(self.device)
        # The averaged generator is what gets exported and sampled; it never trains.
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False) if cfg.ema_beta > 0 else None
        self.g_opt = torch.optim.Adam(self.G.parameters(), cfg.lr, betas=cfg.betas)
        self.d_opt = torch.optim.Adam(self.D.parameters(), cfg.lr, betas=cfg.betas)
        self.iteration = 0
        self.data_gen = torch.Generator().manual_seed(cfg.seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0
        self.stop_requested = False
        self.train_data: FacePack | None = None
        self.val_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # ----- data -------------------------------------------------------------------------------------
    def load_data(self) -> None:
        from core.data import default_celeba_dir

        root = self.cfg.data_dir or default_celeba_dir()
        size = self.forger.image_size
        cache = self.cfg.run_dir.parent / "cache"
        self.train_data = FacePack.load(root, "train", size, cache, self.cfg.limit)
        val = FacePack.load(root, "val", size, cache, 64)
        self.val_batch = val[torch.arange(min(8, len(val)))]

    # ----- one iteration ----------------------------------------------------------------------------
    def step(self, x: torch.Tensor, c_org: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        lr = self.set_lr(self.g_opt, self.d_opt)
        c_trg = c_org[torch.randperm(c_org.shape[0], device=c_org.device)]
        logs: dict[str, float] = {}

        # Critic.
        r1_step = cfg.adv_loss != "wgan-gp" and cfg.r1_gamma > 0 and self.iteration % cfg.r1_every == 0
        x_real = x.detach().requires_grad_(True) if r1_step else x
        out_src, out_cls = self.D(x_real)
        g_step = (self.iteration + 1) % cfg.n_critic == 0
        # With a generator step in this iteration, its edit is computed once: detached for the critic.
        fake_g = self.G(x, c_trg) if g_step else None
        with torch.no_grad():
            fake = fake_g.detach() if fake_g is not None else self.G(x, c_trg)
        fake_src, _ = self.D(fake)
        d_adv = critic_loss(cfg.adv_loss, out_src, fake_src)
        d_cls = _cls_loss(out_cls, c_org)
        lambda_cls_d = cfg.lambda_cls_d if cfg.forger == "attgan" else cfg.lambda_cls
        d_loss = d_adv + lambda_cls_d * d_cls
        if cfg.adv_loss == "wgan-gp":
            d_gp = gradient_penalty(self.D, x, fake)
            d_loss = d_loss + cfg.lambda_gp * d_gp
            logs["d_gp"] = d_gp.item()
        elif r1_step:
            # Lazy regularisation (StyleGAN2): every r1_every steps, weighted by r1_every.
            d_r1 = r1_penalty(out_src, x_real)
            d_loss = d_loss + 0.5 * cfg.r1_gamma * cfg.r1_every * d_r1
            logs["d_r1"] = d_r1.item()
        self.d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_opt.step()
        logs.update(d_real=out_src.mean().item(), d_fake=fake_src.mean().item(), d_adv=d_adv.item(),
                    d_cls=d_cls.item())

        # Generator, every n_critic iterations.
        if fake_g is not None:
            fake = fake_g
            g_src, g_cls_logits = self.D(fake)
            g_adv = generator_adv_loss(cfg.adv_loss, g_src)
            g_cls = _cls_loss(g_cls_logits, c_trg)
            # AttGAN reconstructs from the original attributes directly; StarGAN cycles back.
            rec = self.G(x, c_org) if cfg.forger == "attgan" else self.G(fake, c_org)
            g_rec = (rec - x).abs().mean()
            g_loss = g_adv + cfg.lambda_cls * g_cls + cfg.lambda_rec * g_rec
            if cfg.lambda_id > 0:
                same = self.G(x, c_org)
                id_src, id_cls = self.D(same)
                g_id = (same - x).abs().mean()
                g_loss = (g_loss + generator_adv_loss(cfg.adv_loss, id_src) + cfg.lambda_cls * _cls_loss(id_cls, c_org)
                          + cfg.lambda_id * g_id)
                logs["g_id"] = g_id.item()
            self.g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            self.g_opt.step()
            self.update_ema()
            logs.update(g_adv=g_adv.item(), g_cls=g_cls.item(), g_rec=g_rec.item())
        logs["lr"] = lr
        return logs

    @torch.no_grad()
    def update_ema(self) -> None:
        if self.G_ema is None:
            return
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            p_ema.lerp_(p, 1 - self.cfg.ema_beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    @property
    def G_export(self) -> nn.Module:
        """The weights a run ships: the moving average when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    # ----- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.cfg.to_json(),
            **self.loop_state(),
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            **({"G_ema": self.G_ema.state_dict()} if self.G_ema is not None else {}),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
        }

    def resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        # RNG states and the data order live on the CPU; module and optimiser states follow their parameters.
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        if self.G_ema is not None:
            self.G_ema.load_state_dict(state.get("G_ema", state["G"]))
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])
        self.load_loop_state(state)
        return True

    def warm_start(self, generator: Path, discriminator: Path | None) -> None:
        """Start from exported weights (no optimiser state) when no full state survives."""
        from core.checkpoints import load_weights

        g_state, meta = load_weights(generator)
        self.G.load_state_dict(g_state)
        if self.G_ema is not None:
            self.G_ema.load_state_dict(g_state)
        if discriminator is not None:
            self.D.load_state_dict(load_weights(discriminator)[0])
        self.iteration = int(meta.get("iterations", 0))
        # The card must say where the first iterations came from (another forger's recipe, say).
        self.cfg.extra["warm_start"] = {"from": generator.stem, "forger": meta.get("forger"),
                                        "iterations": self.iteration}

    # ----- outputs ----------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self) -> Path | None:
        if self.val_batch is None:
            return None
        self.G.eval()  # BatchNorm (AttGAN) must not learn from the sample batch
        try:
            return self._sample(self.val_batch)
        finally:
            self.G.train()

    def _sample(self, val_batch: tuple[torch.Tensor, torch.Tensor]) -> Path:
        x, c = (t.to(self.device) for t in val_batch)
        from core.targets import single_attribute_edits

        rows = []
        for i in range(x.shape[0]):
            targets = single_attribute_edits(c[i], self.forger.attributes)
            edits = self.G_export(x[i : i + 1].expand(len(targets), -1, -1, -1), targets)
            rows.append([x[i], *edits])
        path = self.cfg.run_dir / "samples" / f"{self.iteration:07d}.png"
        return save_image(make_grid(rows), path)

    # ----- loop hooks -------------------------------------------------------------------------------
    def set_train_mode(self) -> None:
        self.G.train()
        self.D.train()

    def on_sample(self) -> None:
        self.sample()
