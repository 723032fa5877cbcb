"""CelebA in its own layout (``img_align_celeba/``, ``list_attr_celeba.txt``, ``list_eval_partition.txt``).

Faces are preprocessed as the reference StarGAN does (CenterCrop 178, Resize, [-1, 1]) once, into a
uint8 pack (``celeba-<size>-<split>.npz``: images N x 3 x S x S and their attributes), so training reads
memory instead of decoding JPEGs; the pack is a cache next to the run, never committed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.forgers.base import CELEBA5

SPLITS = {"train": 0, "val": 1, "test": 2}


def default_celeba_dir() -> Path:
    """``$VEIL_CELEBA`` or ``../shared/datasets/celeba`` beside the repository."""
    env = os.environ.get("VEIL_CELEBA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent.parent / "shared" / "datasets" / "celeba"


def celeba_available(root: Path | None = None) -> bool:
    root = root or default_celeba_dir()
    return (root / "list_attr_celeba.txt").is_file() and (root / "img_align_celeba").is_dir()


@dataclass
class CelebAIndex:
    files: list[str]
    attrs: np.ndarray  # (N, A) float32 in {0, 1}
    attributes: tuple[str, ...]


def read_index(root: Path, split: str, attributes: Sequence[str] = CELEBA5) -> CelebAIndex:
    """Files of one split (sorted by name) and their 0/1 attributes."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    lines = (root / "list_attr_celeba.txt").read_text().splitlines()
    names = lines[1].split()
    missing = [a for a in attributes if a not in names]
    if missing:
        raise ValueError(f"attributes not in CelebA: {missing}")
    cols = [names.index(a) for a in attributes]
    part = {}
    for line in (root / "list_eval_partition.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) == 2:
            part[fields[0]] = int(fields[1])
    files, rows = [], []
    for line in lines[2:]:
        fields = line.split()
        if not fields or part.get(fields[0]) != SPLITS[split]:
            continue
        values = fields[1:]
        files.append(fields[0])
        rows.append([values[c] == "1" for c in cols])
    order = np.argsort(files)
    attrs = np.asarray(rows, dtype=np.float32).reshape(-1, len(cols))[order]
    return CelebAIndex([files[i] for i in order], attrs, tuple(attributes))


def preprocess_face(img: Image.Image, size: int) -> np.ndarray:
    """CenterCrop(178) then Resize(size) (bilinear, antialiased), as uint8 (3, size, size)."""
    img = img.convert("RGB")
    w, h = img.size
    crop = min(178, w, h)
    left, top = round((w - crop) / 2), round((h - crop) / 2)
    img = img.crop((left, top, left + crop, top + crop)).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def build_pack(root: Path, split: str, size: int, out: Path, limit: int | None = None) -> Path:
    """Decode and preprocess a split once into ``out`` (npz: images uint8, attrs, files)."""
    index = read_index(root, split)
    files = index.files[:limit] if limit else index.files
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, name in enumerate(files):
        with Image.open(root / "img_align_celeba" / name) as img:
            images[i] = preprocess_face(img, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A per-process temporary name: two trainers started together may build the same pack at once.
    tmp = out.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images, attrs=index.attrs[: len(files)], files=np.asarray(files))
    tmp.replace(out)
    return out


class FacePack:
    """An in-memory pack of preprocessed faces: ``pack[idx]`` -> (x in [-1, 1], attrs)."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as data:
            self.images = torch.from_numpy(data["images"])
            self.attrs = torch.from_numpy(data["attrs"]).float()
            self.files = [str(f) for f in data["files"]]

    @classmethod
    def load(cls, root: Path, split: str, size: int, cache: Path, limit: int | None = None) -> FacePack:
        suffix = f"-{limit}" if limit else ""
        path = cache / f"celeba-{size}-{split}{suffix}.npz"
        if not path.is_file():
            build_pack(root, split, size, path, limit)
        return cls(path)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx].float() / 127.5 - 1.0, self.attrs[idx]
