"""Weights on disk: safetensors with metadata, a manifest with sha256, and safe pickle loading.

Veil's own checkpoints are ``.safetensors`` files whose metadata names the architecture and config, each
listed in ``checkpoints/manifest.json`` with its sha256 and the facts of its training. Reference pickles
(``200000-G.ckpt``) load only through ``torch.load(weights_only=True)``, which cannot run code.
:func:`resolve_weights` is the one way every model (forgers, generator methods, the classifier) turns the
weights it is given into a file.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
MANIFEST_NAME = "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not match what it claims to be."""


def checkpoints_dir() -> Path:
    """Where shipped weights live: ``$VEIL_CHECKPOINTS`` or the repository's ``checkpoints/``."""
    env = os.environ.get("VEIL_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(
    state_dict: dict[str, torch.Tensor], path: Path, metadata: dict[str, Any], half: bool = False
) -> str:
    """Write a state dict as safetensors (optionally fp16 floats) with JSON metadata; return its sha256."""
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach().cpu().contiguous()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in metadata.items()})
    path.chmod(0o644)  # safetensors writes owner-only files; workers may run as another user
    return sha256_file(path)


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a state dict (floats as float32) and its metadata from safetensors or a plain pickle."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                raw_meta = fh.metadata() or {}
                tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (not a dict)
            metadata = {k: json.loads(v) for k, v in raw_meta.items()}
        elif path.suffix in PICKLE_SUFFIXES:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
            metadata = {}
            if not isinstance(tensors, dict):
                raise CheckpointError(f"{path} does not hold a state dict")
        else:
            raise CheckpointError(f"unsupported checkpoint format {path.suffix!r} ({path})")
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt files raise many different types
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return state, metadata


@dataclass
class ManifestEntry:
    """One shipped (or user-provided) set of weights."""

    name: str
    forger: str
    file: str
    config: str | dict[str, Any]
    sha256: str | None = None
    role: str = "generator"
    default: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "forger": self.forger,
            "role": self.role,
            "file": self.file,
            "config": self.config,
            "sha256": self.sha256,
            "default": self.default,
        }
        out.update(self.info)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManifestEntry:
        known = {"name", "forger", "role", "file", "config", "sha256", "default"}
        try:
            return cls(
                name=data["name"],
                forger=data["forger"],
                file=data["file"],
                config=data["config"],
                sha256=data.get("sha256"),
                role=data.get("role", "generator"),
                default=bool(data.get("default", False)),
                info={k: v for k, v in data.items() if k not in known},
            )
        except KeyError as exc:
            raise CheckpointError(f"manifest entry lacks {exc}: {data}") from None


class Manifest:
    """``checkpoints/manifest.json``: the list of weights Veil knows, with their sha256."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory) if directory else checkpoints_dir()
        self.path = self.directory / MANIFEST_NAME
        self.entries = self._read()
        self._loaded = {e.name: e.to_json() for e in self.entries}

    def _read(self) -> list[ManifestEntry]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{self.path} is not valid JSON: {exc}") from exc
        return [ManifestEntry.from_json(e) for e in data.get("models", [])]

    def find(self, name: str) -> ManifestEntry | None:
        return next((e for e in self.entries if e.name == name), None)

    def default_for(self, forger: str, role: str = "generator") -> ManifestEntry | None:
        candidates = [e for e in self.entries if e.forger == forger and e.role == role]
        defaults = [e for e in candidates if e.default]
        pool = defaults or candidates
        return pool[0] if pool else None

    def resolve(self, entry: ManifestEntry, verify: bool = True) -> Path:
        path = self.directory / entry.file
        if not path.is_file():
            raise CheckpointError(f"manifest entry {entry.name!r} points to a missing file: {path}")
        if verify and entry.sha256 and sha256_file(path) != entry.sha256:
            raise CheckpointError(f"sha256 mismatch for {path}: the file is corrupt or was replaced")
        return path

    def upsert(self, entry: ManifestEntry) -> None:
        self.entries = [e for e in self.entries if e.name != entry.name] + [entry]
        if entry.default:
            for other in self.entries:
                if other is not entry and other.forger == entry.forger and other.role == entry.role:
                    other.default = False

    def save(self) -> None:
        """Write the entries this instance added or changed into the manifest as it is on disk now.

        Two processes (an export and a measurement, say) may each hold a Manifest loaded earlier: each
        merges only its own changes, under a lock, so neither drops the other's entries.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f".{MANIFEST_NAME}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            changed = {e.name: e for e in self.entries if self._loaded.get(e.name) != e.to_json()}
            merged = [changed.pop(e.name, e) for e in self._read()] + list(changed.values())
            data = {"version": 1, "models": [e.to_json() for e in merged]}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(self.path)
        self.entries = merged
        self._loaded = {e.name: e.to_json() for e in merged}


def resolve_weights(
    checkpoint: str | Path | None,
    kind: str,
    role: str,
    *,
    default: str | None = None,
    prefer: Callable[[ManifestEntry], Any] | None = None,
    hint: str = "",
    manifest: Manifest | None = None,
    verify: bool = True,
) -> tuple[Path, ManifestEntry | None]:
    """The weights file ``checkpoint`` names, and its manifest entry when the manifest lists it.

    Weights are named one of three ways (as timm's one resolver names a model's weights):

    * a manifest entry name: that entry, which must hold weights of ``kind`` (its ``forger`` field: a
      forger, a generator method, ``classifier``) for ``role`` (``generator``, ``discriminator``,
      ``generator-method``, ``classifier``); its file is checked against its sha256;
    * a file path: that file (with its manifest entry when one lists the same file);
    * None: the shipped entry for (``kind``, ``role``): the entry named ``default`` when given, else among
      the entries of that kind and role the one ranked highest by ``prefer`` (then the default entry, then
      the first listed).

    ``hint`` (what to do instead: train, pass a file, use random weights) ends the error raised when no
    shipped weights exist. ``verify=False`` skips the sha256 check, for a caller that only reads the entry.
    """
    manifest = manifest or Manifest()

    def fits(entry: ManifestEntry) -> bool:
        return entry.forger == kind and entry.role == role

    def missing(what: str) -> CheckpointError:
        return CheckpointError(f"no shipped {what} in {manifest.path}" + (f"; {hint}" if hint else ""))

    if checkpoint is None:
        if default is not None:
            entry = manifest.find(default)
            if entry is None or not fits(entry):
                raise missing(f"{role} weights {default!r}")
            return manifest.resolve(entry, verify), entry
        entries = [e for e in manifest.entries if fits(e)]
        if not entries:
            raise missing(f"{role} weights for {kind!r}")
        entry = max(entries, key=lambda e: (prefer(e) if prefer else 0, e.default))  # max keeps the first of ties
        return manifest.resolve(entry, verify), entry
    found = manifest.find(str(checkpoint))
    if found is not None:
        if not fits(found):
            raise CheckpointError(f"manifest entry {found.name!r} is a {found.forger} {found.role}, "
                                  f"not {kind} {role} weights")
        return manifest.resolve(found, verify), found
    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {checkpoint} (neither a file nor a manifest entry)")
    listed = next((e for e in manifest.entries
                   if fits(e) and (manifest.directory / e.file).resolve() == path.resolve()), None)
    return path, listed
