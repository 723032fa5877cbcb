"""Choosing a torch device by name, with a clear error instead of a CUDA assertion, and how many CPU threads."""

from __future__ import annotations

import os

import torch

# torch's default intra-op threads (the physical cores), read before anything here changes it
_DEFAULT_THREADS = torch.get_num_threads()


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


def free_cpu_threads(cores: int | None = None, load: float | None = None) -> int:
    """CPU threads worth giving torch now: the cores this process may run on less those other work keeps busy
    (the 1-minute load average, rounded), at least 1 and at most torch's own default (the physical cores).

    Intra-op threads synchronise at every operation, so one that shares its core with a busy process holds up
    the others: beside one busy process on 2 cores, ``veil protect`` took 44 s at 2 threads and 9.3 s at 1.
    ``cores`` and ``load`` default to this machine's.
    """
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cores - round(load), cores, _DEFAULT_THREADS))


def use_cpu_threads(threads: int | None) -> int:
    """Set torch's CPU threads: ``threads``, or :func:`free_cpu_threads` when None. Returns the number set."""
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    n = threads if threads is not None else free_cpu_threads()
    torch.set_num_threads(n)
    return n
