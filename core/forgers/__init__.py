"""Forger registry: ``create_forger(name, checkpoint=None)``.

``checkpoint`` may be a path (``.safetensors`` written by Veil, or a reference ``.ckpt`` pickle, loaded
with ``weights_only=True``), the name of a manifest entry, or None for the shipped default weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from core.checkpoints import CheckpointError, Manifest, ManifestEntry, load_weights
from core.forgers import attgan as _attgan  # noqa: F401  (registers)
from core.forgers import stargan as _stargan  # noqa: F401  (registers)
from core.forgers.base import CELEBA5, FORGERS, ArchSpec, Forger, InstanceNorm

__all__ = [
    "CELEBA5",
    "FORGERS",
    "ArchSpec",
    "Forger",
    "InstanceNorm",
    "create_discriminator",
    "create_forger",
    "forger_names",
]


def forger_names() -> list[str]:
    return FORGERS.names()


def arch(name: str) -> ArchSpec:
    return FORGERS.get(name)()


def _locate(
    name: str, checkpoint: str | Path | None, role: str, manifest: Manifest
) -> tuple[Path, ManifestEntry | None]:
    if checkpoint is None:
        entry = manifest.default_for(name, role)
        if entry is None:
            raise CheckpointError(
                f"no shipped {role} weights for forger {name!r} in {manifest.path}; train one with "
                f"`veil train forger`, pass a checkpoint path, or use pretrained=False for random weights"
            )
        return manifest.resolve(entry), entry
    entry = manifest.find(str(checkpoint))
    if entry is not None:
        return manifest.resolve(entry), entry
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint} (neither a file nor a manifest entry)")
    listed = next((e for e in manifest.entries if manifest.directory / e.file == path.resolve()), None)
    return path, listed


def _config_for(spec: ArchSpec, config: str | dict[str, Any] | None, *sources: Any) -> dict[str, Any]:
    """Explicit config wins, then the checkpoint's own metadata, then its manifest entry."""
    if config is None:
        config = next((s for s in sources if s), None)
    return spec.config(config)


def _load(
    module: nn.Module, name: str, checkpoint: str | Path | None, role: str, config: Any
) -> tuple[str, dict[str, Any]]:
    manifest = Manifest()
    path, _ = _locate(name, checkpoint, role, manifest)
    state, meta = load_weights(path)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit {name} ({role}, config {config}): {first}") from exc
    return str(path), meta


def _resolve_config(
    spec: ArchSpec, name: str, checkpoint: str | Path | None, role: str, config: Any, pretrained: bool
) -> dict[str, Any]:
    if not pretrained and checkpoint is None:
        return spec.config(config)
    manifest = Manifest()
    path, entry = _locate(name, checkpoint, role, manifest)
    meta: dict[str, Any] = {}
    if path.suffix == ".safetensors":
        _, meta = load_weights(path)
    return _config_for(spec, config, meta.get("config"), entry.config if entry else None)


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
    spec = arch(name)
    cfg = _resolve_config(spec, name, checkpoint, "generator", config, pretrained)
    forger = Forger(name, spec.build_generator(cfg, len(spec.attributes)), cfg, spec.attributes)
    if pretrained or checkpoint is not None:
        forger.source, _ = _load(forger.generator, name, checkpoint, "generator", cfg)
    return forger.freeze() if frozen else forger


def create_discriminator(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    config: str | dict[str, Any] | None = None,
    pretrained: bool = True,
) -> nn.Module:
    """The forger's critic/attribute classifier (training, and targets from its classifier head)."""
    spec = arch(name)
    cfg = _resolve_config(spec, name, checkpoint, "discriminator", config, pretrained)
    module = spec.build_discriminator(cfg, len(spec.attributes))
    if pretrained or checkpoint is not None:
        _load(module, name, checkpoint, "discriminator", cfg)
    return module
