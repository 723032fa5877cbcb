"""Choosing a torch device by name, with a clear error instead of a CUDA assertion."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ``cuda[:N]`` must exist; raises ValueError otherwise."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(f"no CUDA device {name!r} ({torch.cuda.device_count()} available)")
        return name
    raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
