"""One-pass protection methods: a trained perturbation generator instead of an iterative attack.

A :class:`GeneratorMethod` is a :class:`~core.methods.base.Protection` whose :meth:`perturb` runs its
generator network once, with no gradient and no forger call at all: protecting a photo costs one
forward pass of a small U-Net instead of ``steps`` forward and backward passes of every forger. The
forgers are only needed to *train* the generator (:mod:`core.train.generator`), end to end through
:meth:`GeneratorMethod.training_loss`.

Weights: ``checkpoint=`` a ``.safetensors`` path or a manifest entry name; by default the shipped
entry of ``checkpoints/manifest.json`` with ``role: "generator-method"`` and ``forger: <method name>``
that was trained against the same forgers (else the method's default entry). Its forgers are the weights it
was trained against (:func:`trained_forger_weights`, which ``core.protect.build_protection`` loads), not
necessarily the forgers' current defaults. ``pretrained=False``
builds random weights (tests, training from scratch). A checkpoint's metadata sets the network config
and, unless given, ``eps`` and ``objective``.

Options of the iterative methods keep their meaning where they have one: ``eps`` (the budget),
``objective``, ``seed``. ``random_start`` feeds the generator a seeded uniform noise map (its extra
input channel; zeros when False, so the output no longer depends on ``seed``). ``steps=0`` skips the
generator: with ``random_start`` the output is uniform noise over the budget (the baseline every method
must beat), else the unchanged image. Any other ``steps`` value means the one pass.
"""

from __future__ import annotations

import inspect
import logging
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from core.checkpoints import CheckpointError, Manifest, ManifestEntry, load_weights, resolve_weights
from core.forgers import Forger
from core.generators.features import FeatureDistance, feature_distance
from core.generators.nets import PerturbationUNet, generator_config
from core.methods.base import Protection, Through, expand_targets
from core.methods.pgd_l2 import rgb_to_weighted

log = logging.getLogger(__name__)

ROLE = "generator-method"


def _forger_names(forgers: Forger | Sequence[Forger]) -> list[str]:
    return [forgers.name] if isinstance(forgers, Forger) else [f.name for f in forgers]


def locate_generator(
    method: str, forgers: Sequence[str], checkpoint: str | Path | None, load: bool = True
) -> tuple[Path, ManifestEntry | None]:
    """The weights file of a generator method, and its manifest entry when it has one.

    With no ``checkpoint``: the manifest's ``generator-method`` entries of ``method``, preferring one
    trained against exactly ``forgers``, then the default entry, then the first listed. ``load=False`` only
    looks the entry up: no sha256 check of the file and no warning (the load that follows does both).
    """
    wanted = sorted(forgers)

    def trained_against(entry: ManifestEntry) -> list[str]:
        return sorted(entry.info.get("forgers", []))

    path, entry = resolve_weights(
        checkpoint, method, ROLE, prefer=lambda e: trained_against(e) == wanted,
        hint=f"train them with `veil train generator --method {method}`, pass checkpoint=<file or manifest "
             f"entry>, or use pretrained=False for random (untrained) weights",
        verify=load,
    )
    if load and checkpoint is None and entry is not None and trained_against(entry) != wanted:
        log.warning("%s: no %s weights trained against %s; using %s (trained against %s)", method, ROLE,
                    ", ".join(wanted), entry.name, ", ".join(trained_against(entry)) or "?")
    return path, entry


def trained_forger_weights(method: str, forgers: Sequence[str], checkpoint: str | Path | None = None
                           ) -> dict[str, str]:
    """The manifest entries of the forger weights a generator method's weights were trained against, by forger
    name (e.g. ``{"stargan": "stargan-compact64"}``): a generator is only as good as against the editor it
    learnt to break, so it is measured, and protects, against that one rather than the forger's newer
    default. Empty when the weights do not say or their forgers are not in the manifest."""
    _, entry = locate_generator(method, forgers, checkpoint, load=False)
    if entry is None:
        return {}
    manifest = Manifest()
    files = set(entry.info.get("forger_weights", []))
    return {e.forger: e.name for e in manifest.entries
            if e.role == "generator" and e.file in files and e.forger in forgers}


# The keyword arguments of Protection.__init__ (eps, steps, ..., seed), told apart from a method's options.
PROTECTION_ARGS = frozenset(inspect.signature(Protection.__init__).parameters) - {"self", "forgers"}

_WEIGHTS: dict[tuple[str, int, int], tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}


def _cached_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A generator's weights, read once per process (workers build a method per job) and again only when
    the file changes. The state dict is only ever copied into a network, never changed in place."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key not in _WEIGHTS:
        _WEIGHTS[key] = load_weights(path)
    return _WEIGHTS[key]


class GeneratorMethod(Protection):
    """Base of the one-pass methods: checkpoint loading, the single pass, the noise baseline.

    Subclasses define :meth:`build_net` (the network for a config), :meth:`generate` (x and the noise map
    -> x_adv, differentiable, within the budget), :meth:`noise_shape`, :meth:`noise_baseline` and
    :meth:`training_loss`; ``option_defaults`` lists the method's own options (loss weights, masks),
    which a checkpoint records and keyword arguments override.
    """

    one_pass: ClassVar[bool] = True
    default_config: ClassVar[str] = "compact64"
    option_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        forgers: Forger | Sequence[Forger],
        *,
        checkpoint: str | Path | None = None,
        pretrained: bool = True,
        config: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # Protection's own arguments (eps, steps, objective, seed, ...) pass through; the rest are the
        # method's options.
        options = {k: kwargs.pop(k) for k in list(kwargs) if k not in PROTECTION_ARGS}
        unknown = set(options) - set(self.option_defaults)
        if unknown:
            known = ", ".join(sorted(self.option_defaults)) or "none"
            raise ValueError(f"unknown option(s) {sorted(unknown)} for {self.name}; known: {known}")
        state: dict[str, torch.Tensor] | None = None
        meta: dict[str, Any] = {}
        entry: ManifestEntry | None = None
        self.source = "random init"
        if pretrained or checkpoint is not None:
            path, entry = locate_generator(self.name, _forger_names(forgers), checkpoint)
            state, meta = _cached_weights(path)
            if meta.get("method", self.name) != self.name:
                raise CheckpointError(f"{path} holds {meta['method']} weights, not {self.name}")
            self.source = str(path)
        if config is None:
            config = meta.get("config") or (entry.config if entry else None)
        self.config = generator_config(config, self.default_config)
        # A checkpoint's budget and objective apply unless given.
        if kwargs.get("eps") is None:
            kwargs["eps"] = meta.get("eps")
        kwargs["objective"] = kwargs.get("objective") or meta.get("objective")
        super().__init__(forgers, **kwargs)
        self.options: dict[str, Any] = {**self.option_defaults, **meta.get("options", {}), **options}
        self.trained_against: list[str] = list(meta.get("forgers", []))
        with torch.random.fork_rng(devices=[]):  # random weights follow `seed`, not the global RNG
            torch.manual_seed(self.seed)
            self.net = self.build_net(self.config)
        if state is not None:
            try:
                self.net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise CheckpointError(
                    f"{self.source} does not fit {self.name} (config {self.config}): {first}"
                ) from exc
        self.net.requires_grad_(False).eval()
        self._features: FeatureDistance | None = None
        self._features_checked = False

    # ----- for subclasses -----------------------------------------------------------------------------
    @abstractmethod
    def build_net(self, config: dict[str, Any]) -> nn.Module:
        """The generator network of ``config`` (random weights)."""

    @abstractmethod
    def noise_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        """Shape of the noise map the network takes for images ``x``."""

    @abstractmethod
    def generate(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """x (N, 3, H, W) in [-1, 1] and noise z -> x_adv in [-1, 1] within the budget (differentiable)."""

    @abstractmethod
    def noise_baseline(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Seeded uniform noise over the method's own budget, added to x."""

    @abstractmethod
    def training_loss(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise for a batch (x, targets (N, T, A)), and its terms for the log."""

    # ----- networks trained beside the generator (none by default; initiative's surrogate forger) ------
    def auxiliary(self) -> nn.Module | None:
        """A network the trainer updates with its own optimiser before each generator step, or None."""
        return None

    def auxiliary_loss(
        self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The auxiliary network's loss for a batch, and its terms for the log."""
        raise NotImplementedError(f"{self.name} trains no auxiliary network")

    def generator_active(self, iteration: int) -> bool:
        """Whether the generator learns at this iteration (False: the auxiliary network warms up alone)."""
        return True

    def validation_extras(self, x: torch.Tensor, x_adv: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Numbers of the method's own that the trainer logs with each validation (none by default)."""
        return {}

    # ----- the one pass -------------------------------------------------------------------------------
    def noise(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The generator's noise input: seeded uniform in [-1, 1] with ``random_start``, else zeros."""
        shape = self.noise_shape(x)
        if not self.random_start:
            return x.new_zeros(shape)
        return self.uniform(torch.Size(shape), 1.0, gen, x)

    def perturb(self, x: torch.Tensor, targets: torch.Tensor, gen: torch.Generator, through: Through
                ) -> torch.Tensor:
        if self.steps == 0:
            return self.noise_baseline(x, gen) if self.random_start else x.clone()
        with torch.no_grad():
            self.net.to(x.device)
            return self.generate(x, self.noise(x, gen))

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(steps=1 if self.steps else 0, step_size=None, one_pass=True, weights=Path(self.source).name,
                   config=self.config.get("config_name", self.config), trained_against=self.trained_against)
        return out

    # ----- training helpers ---------------------------------------------------------------------------
    def features(self, device: torch.device) -> FeatureDistance | None:
        """The VGG16 feature distance, or None (warned once) when ``lambda_feat`` is 0 or weights are absent."""
        if float(self.options.get("lambda_feat", 0.0)) <= 0:
            return None
        if not self._features_checked:
            self._features = feature_distance(device)
            self._features_checked = True
        return self._features

    def seen(self, x_adv: torch.Tensor, gen: torch.Generator, x: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the forgers see: x_adv (and x, with the very same draw) through the EoT transform, if any."""
        if self.eot is None:
            return x_adv, x
        if x is None:
            return self.eot(x_adv, generator=gen), None
        both = self.eot(torch.cat([x_adv, x]), generator=gen)
        return both[: x_adv.shape[0]], both[x_adv.shape[0] :]

    def forger_outputs(self, x: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """G(x, c) of every forger over every target: (N*T, 3, H, W) each, differentiable in x."""
        xs, cs = expand_targets(x, targets)
        return [f(xs, cs) for f in self.forgers]


class RGBGeneratorMethod(GeneratorMethod):
    """A one-pass method whose U-Net writes an RGB perturbation: ``x_adv = clamp(x + eps * tanh(P(x, z)))``,
    an L-inf ball of radius ``eps`` on [-1, 1]. Subclasses define the training objective."""

    budget_units = "L-inf on [-1, 1]"
    eps_range = (0.0, 0.5)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if float(self.options.get("chroma_weight", 1.0)) < 1.0:
            raise ValueError(f"chroma_weight must be at least 1, got {self.options['chroma_weight']}")

    def build_net(self, config: dict[str, Any]) -> nn.Module:
        return PerturbationUNet(3 + int(config["noise_channels"]), 3, int(config["width"]), int(config["depth"]))

    def noise_shape(self, x: torch.Tensor) -> tuple[int, ...]:
        return (x.shape[0], int(self.config["noise_channels"]), x.shape[2], x.shape[3])

    def generate(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        logits = self.net(torch.cat([x, z], dim=1))
        return (x + self.eps * torch.tanh(logits)).clamp(-1, 1)

    def noise_baseline(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return (x + self.uniform(x.shape, self.eps, gen, x)).clamp(-1, 1)

    def magnitude_loss(self, x_adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``lambda_mag * mse(x_adv, x) + lambda_feat * d_VGG16(x_adv, x)``: the imperceptibility term.

        The option ``chroma_weight`` w >= 1 adds (w^2 - 1) times the mean square of the perturbation's colour part
        (BT.601 Cb and Cr, averaged over those two channels): smooth colour patches are what shows at 400 % zoom,
        and the generator trained through the photo channel tinted faces without it. At w = 3 a pure Cb or Cr
        change costs about 5 times a grey one of the same RGB size.
        """
        d = x_adv - x
        l_pix = d.pow(2).mean()
        weight = float(self.options.get("chroma_weight", 1.0))
        if weight != 1.0:
            l_pix = l_pix + (weight**2 - 1) * rgb_to_weighted(d, 1.0)[:, 1:].pow(2).mean()  # the delta's Cb, Cr
        features = self.features(x.device)
        l_feat = features(x_adv, x).mean() if features is not None else x.new_zeros(())
        loss = float(self.options["lambda_mag"]) * l_pix + float(self.options.get("lambda_feat", 0.0)) * l_feat
        return loss, {"l_pix": l_pix.item(), "l_feat": l_feat.item()}
