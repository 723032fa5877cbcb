"""Forger registry: ``create_forger(name, checkpoint=None)``.

``checkpoint`` may be a path (``.safetensors`` written by Veil, or a reference ``.ckpt`` pickle, loaded
with ``weights_only=True``), the name of a manifest entry, or None for the shipped default weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from core.checkpoints import CheckpointError, load_weights, resolve_weights
from core.forgers import attgan as _attgan  # noqa: F401  (registers)
from core.forgers import fpgan as _fpgan  # noqa: F401  (registers)
from core.forgers import stargan as _stargan  # noqa: F401  (registers)
from core.forgers.base import CELEBA5, FORGERS, ArchSpec, Forger, InstanceNorm, compile_forger

__all__ = [
    "CELEBA5",
    "FORGERS",
    "ArchSpec",
    "Forger",
    "InstanceNorm",
    "compile_forger",
    "create_discriminator",
    "create_forger",
    "forger_names",
]


def forger_names() -> list[str]:
    return FORGERS.names()


def arch(name: str) -> ArchSpec:
    return FORGERS.get(name)()


def _build(
    name: str, checkpoint: str | Path | None, role: str, config: str | dict[str, Any] | None, pretrained: bool
) -> tuple[nn.Module, dict[str, Any], str]:
    """Locate and read the weights once, pick the config, build the module and load them strictly.

    The config: an explicit one wins, then the checkpoint's own metadata, then its manifest entry, then
    the architecture's default (the reference layout for plain pickles).
    """
    spec = arch(name)
    build = spec.build_generator if role == "generator" else spec.build_discriminator
    if not pretrained and checkpoint is None:
        cfg = spec.config(config)
        return build(cfg, len(spec.attributes)), cfg, "random init"
    path, entry = resolve_weights(
        checkpoint, name, role,
        hint="train one with `veil train forger`, pass a checkpoint path, or use pretrained=False for random weights",
    )
    state, meta = load_weights(path)
    if config is None:
        config = meta.get("config") or (entry.config if entry else None)
    cfg = spec.config(config)
    module = build(cfg, len(spec.attributes))
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit {name} ({role}, config {config}): {first}") from exc
    return module, cfg, str(path)


def create_forger(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    config: str | dict[str, Any] | None = None,
    pretrained: bool = True,
    frozen: bool = True,
) -> Forger:
    """Build a forger by registry name.

    Args:
        name: ``stargan``, ``fpgan`` or ``attgan`` (see :func:`forger_names`).
        checkpoint: a weights file or manifest entry name; None loads the shipped default weights.
        config: a named config of the architecture (``celeba128``, ``compact64``, ``tiny``) or a dict;
            by default read from the checkpoint.
        pretrained: False builds random weights (tests, training from scratch).
        frozen: eval mode without parameter gradients, as protections use it.
    """
    generator, cfg, source = _build(name, checkpoint, "generator", config, pretrained)
    forger = Forger(name, generator, cfg, arch(name).attributes)
    forger.source = source
    return forger.freeze() if frozen else forger


def create_discriminator(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    config: str | dict[str, Any] | None = None,
    pretrained: bool = True,
) -> nn.Module:
    """The forger's critic/attribute classifier (training, and targets from its classifier head)."""
    module, _, _ = _build(name, checkpoint, "discriminator", config, pretrained)
    return module
