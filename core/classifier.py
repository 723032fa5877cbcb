"""A small CNN that predicts the forgers' attributes (CelebA-5) from a face.

It measures edit quality (does a forger's "make blond" edit produce a face the classifier calls blond?)
and gives targets for faces whose attributes are unknown. Trained by ``veil train classifier`` on the
same CelebA train split as the forgers; its validation accuracy per attribute is in its model card.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.checkpoints import (
    CheckpointError,
    Manifest,
    ManifestEntry,
    checkpoints_dir,
    load_weights,
    resolve_weights,
    save_weights,
)
from core.forgers.base import CELEBA5

CLASSIFIER_NAME = "attribute-classifier"
# The judge of edits at the forgers' 128 px: it measures forgers and protections and is never a training
# signal for any forger or generator (a recipe that wants a classifier loss must train its own network).
JUDGE_NAME = "attribute-classifier-128"


class AttributeClassifier(nn.Module):
    """x (N, 3, H, W) in [-1, 1] (resized to ``image_size``) -> attribute logits (N, A)."""

    def __init__(self, image_size: int = 64, width: int = 32, attributes: tuple[str, ...] = CELEBA5) -> None:
        super().__init__()
        self.image_size = image_size
        self.width = width
        self.attributes = attributes
        # A stride-2 stem, then three (conv, strided conv) stages: cheap enough to train on a CPU.
        layers: list[nn.Module] = [nn.Conv2d(3, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
                                   nn.ReLU(inplace=True)]
        n_in = width
        for i in range(3):
            n_out = width * 2**i
            layers += [nn.Conv2d(n_in, n_out, 3, 1, 1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU(inplace=True),
                       nn.Conv2d(n_out, n_out, 3, 2, 1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU(inplace=True)]
            n_in = n_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(n_in, len(attributes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.head(self.features(x).mean(dim=(2, 3)))


def load_classifier(checkpoint: str | Path | None = None, name: str = CLASSIFIER_NAME) -> AttributeClassifier:
    """The shipped classifier ``name`` (or ``checkpoint``: a file or another manifest entry), frozen in eval mode."""
    path, _ = resolve_weights(checkpoint, "classifier", "classifier", default=name,
                              hint="train one with `veil train classifier`")
    state, meta = load_weights(path)
    cfg = meta.get("config", {})
    model = AttributeClassifier(cfg.get("image_size", 64), cfg.get("width", 32))
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def accuracy(model: AttributeClassifier, x: torch.Tensor, c: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Per-attribute accuracy (A,) of ``model`` on faces ``x`` with 0/1 labels ``c``."""
    model.eval()
    correct = torch.zeros(c.shape[1])
    for i in range(0, len(x), batch):
        pred = model(x[i : i + batch]) > 0
        correct += (pred == c[i : i + batch].bool()).float().sum(0)
    return correct / len(x)


def train_classifier(
    train_x: torch.Tensor, train_c: torch.Tensor, val_x: torch.Tensor, val_c: torch.Tensor,
    epochs: int = 6, batch: int = 64, lr: float = 2e-3, seed: int = 0, width: int = 32, image_size: int = 64,
    log: Any = print,
) -> tuple[AttributeClassifier, dict[str, Any]]:
    """Train with Adam, light augmentation (horizontal flips) and a cosine schedule; returns model and facts."""
    torch.manual_seed(seed)
    model = AttributeClassifier(image_size, width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(train_x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.monotonic()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(train_x))
        for i in range(0, len(train_x), batch):
            idx = perm[i : i + batch]
            x, c = train_x[idx].float() / 127.5 - 1, train_c[idx]
            flip = torch.rand(len(idx)) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.binary_cross_entropy_with_logits(model(x), c)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, val_x.float() / 127.5 - 1, val_c)
        log(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, val acc " +
            ", ".join(f"{a} {v:.3f}" for a, v in zip(CELEBA5, acc.tolist(), strict=True)))
    facts = {
        "epochs": epochs,
        "seconds": time.monotonic() - start,
        "val_accuracy": dict(zip(CELEBA5, [round(v, 4) for v in acc.tolist()], strict=True)),
        "val_faces": len(val_x),
        "train_faces": len(train_x),
    }
    return model, facts


def load_judge() -> AttributeClassifier:
    """The evaluation classifier at 128 px; the 64 px one where it is not shipped (older checkouts, tests)."""
    try:
        return load_classifier(name=JUDGE_NAME)
    except CheckpointError:
        return load_classifier()


def _once_per_checkpoints(load: Callable[[], AttributeClassifier]) -> Callable[[], AttributeClassifier | None]:
    """``load``, called once per checkpoints folder and kept; None (also kept) where nothing is shipped."""
    cache: dict[str, AttributeClassifier | None] = {}

    def get() -> AttributeClassifier | None:
        key = str(checkpoints_dir())
        if key not in cache:
            try:
                cache[key] = load()
            except CheckpointError:
                cache[key] = None
        return cache[key]

    return get


# The shipped classifier (targets for faces of unknown attributes) and the judge (measuring edits), resident.
default_classifier = _once_per_checkpoints(load_classifier)
default_judge = _once_per_checkpoints(load_judge)


def export_classifier(model: AttributeClassifier, facts: dict[str, Any], hardware: str,
                      name: str = CLASSIFIER_NAME) -> ManifestEntry:
    file = f"{name}.safetensors"
    cfg = {"image_size": model.image_size, "width": model.width}
    sha = save_weights(model.state_dict(), checkpoints_dir() / file, {"config": cfg, **facts})
    entry = ManifestEntry(name=name, forger="classifier", role="classifier", file=file, config=cfg,
                          sha256=sha, info={"architecture": "AttributeClassifier (7 conv, BN, ReLU)",
                                            "data": f"CelebA train split (24,000 faces), {model.image_size} px",
                                            "hardware": hardware, "metrics": facts["val_accuracy"],
                                            "licence": "CelebA: non-commercial research use only", **facts})
    manifest = Manifest()
    manifest.upsert(entry)
    manifest.save()
    write_classifier_card(entry, model)
    return entry


def write_classifier_card(entry: ManifestEntry, model: AttributeClassifier) -> Path:
    """``checkpoints/<name>.md``: what the classifier is, how it was trained, its validation accuracy."""
    info = entry.info
    params = sum(p.numel() for p in model.parameters())
    rows = "\n".join(f"| {a} | {v:.4f} |" for a, v in info["val_accuracy"].items())
    role = ("the judge of edits: the forgers' (their cards, the forger campaign's curve) and whether a protection "
            "blocks them (`edit_blocked` in `veil eval`, the receipt and the photo benchmark); "
            "it is never a training signal for any forger or generator" if entry.name == JUDGE_NAME else
            "targets for faces of unknown attributes")
    card = f"""# {entry.name}

A small CNN (`core.classifier.AttributeClassifier`: stride-2 stem and three conv stages with batch norm,
{params:,} parameters, {model.image_size} px input) that reads the five CelebA attributes the forgers edit:
{", ".join(model.attributes)}. Veil uses it for {role}.

## Training
- Data: CelebA train split ({info["train_faces"]:,} aligned faces), CenterCrop 178, resize {model.image_size}, [-1, 1],
  horizontal flips.
- Adam with a one-cycle schedule (max lr 2e-3), batch 64, {info["epochs"]} epochs, binary cross-entropy per attribute.
- Hardware: {info["hardware"]}, {info["seconds"]:.0f} s.
- Reproduce: `veil train classifier --size {model.image_size} --epochs {info["epochs"]}`.

## Measured (validation split, {info["val_faces"]:,} faces, threshold 0 on the logits)
| attribute | accuracy |
|---|---|
{rows}

## Intended use and limits
- For measuring edits{" and choosing protection targets" if entry.name != JUDGE_NAME else ""}; not for judging real
  people.
- CelebA labels are noisy (hair colour and age especially); accuracy is bounded by that noise and by
  CelebA's demographics. Trained on CelebA: non-commercial research use only.
"""
    path = checkpoints_dir() / f"{entry.name}.md"
    path.write_text(card)
    return path
