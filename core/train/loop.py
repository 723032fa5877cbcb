"""What both trainers share: the loop (iterate, log, sample, checkpoint; a progress bar; Ctrl-C saves and
stops), the loop's own state across resumes, and the learning-rate schedule (constant, then a linear decay)."""

from __future__ import annotations

import json
import signal
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from core.data import FacePack


def linear_decay(lr: float, it: int, iters: int, decay_from: float) -> float:
    """``lr`` until ``decay_from * iters``, then linearly down to 0 at ``iters`` (``decay_from`` 1: constant)."""
    start = int(iters * decay_from)
    if it < start:
        return lr
    return lr * max(0.0, (iters - it) / max(1, iters - start))


class ResumableTrainer(ABC):
    """Subclasses provide the data, one optimisation step, the state and the periodic sample.

    They set ``iteration``, ``stop_requested`` and ``cfg`` (with ``iters``, ``lr``, ``decay_from``,
    ``log_every``, ``sample_every``, ``ckpt_every`` and ``run_dir``); ``name`` labels the progress bar,
    ``progress_keys`` picks the losses it shows (None: all but the learning rate).
    """

    iteration: int
    stop_requested: bool
    cfg: Any
    device: torch.device
    train_data: FacePack | None
    data_gen: torch.Generator
    perm: torch.Tensor
    pos: int
    name: str = "train"
    cpu_seconds: float = 0.0  # process CPU time spent in steps, across resumes: the campaign's clock
    progress_keys: tuple[str, ...] | None = None

    @abstractmethod
    def load_data(self) -> None:
        """Set ``train_data``."""

    @abstractmethod
    def step(self, *batch: Any) -> dict[str, float]: ...

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    def data_loaded(self) -> bool:
        return self.train_data is not None

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of a seeded permutation per epoch (its state is saved: resume is exact)."""
        assert self.train_data is not None
        bs = min(self.cfg.batch_size, len(self.train_data))
        if self.pos + bs > len(self.perm):
            self.perm = torch.randperm(len(self.train_data), generator=self.data_gen)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + bs]
        self.pos += bs
        x, c = self.train_data[idx]
        return x.to(self.device), c.to(self.device)

    # ----- the learning-rate schedule ---------------------------------------------------------------
    def lr_at(self, it: int) -> float:
        """``cfg.lr``, then a linear decay to 0 over the last ``1 - cfg.decay_from`` of ``cfg.iters``."""
        return linear_decay(self.cfg.lr, it, self.cfg.iters, self.cfg.decay_from)

    def set_lr(self, *optimizers: torch.optim.Optimizer) -> float:
        """Give every parameter group of ``optimizers`` this iteration's learning rate; return it."""
        lr = self.lr_at(self.iteration)
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
        return lr

    # ----- state ------------------------------------------------------------------------------------
    def loop_state(self) -> dict[str, Any]:
        """The loop's part of a saved state: iteration, CPU seconds, the global RNG and the data order."""
        return {"iteration": self.iteration, "cpu_seconds": self.cpu_seconds, "torch_rng": torch.get_rng_state(),
                "data_gen": self.data_gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_loop_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`loop_state` (RNG states and the data order live on the CPU)."""
        torch.set_rng_state(state["torch_rng"])
        self.data_gen.set_state(state["data_gen"])
        self.perm, self.pos, self.iteration = state["perm"], int(state["pos"]), int(state["iteration"])
        self.cpu_seconds = float(state.get("cpu_seconds", 0.0))

    @property
    def state_path(self) -> Path:
        return self.cfg.run_dir / "state.pt"

    def save(self) -> Path:
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(self.state_dict(), tmp)
        tmp.replace(self.state_path)  # atomic: a crash mid-write never leaves a broken state.pt
        return self.state_path

    @abstractmethod
    def on_sample(self) -> None:
        """Every ``sample_every`` iterations (sample grids, validation numbers)."""

    @abstractmethod
    def set_train_mode(self) -> None:
        """Put the trained networks in training mode before the loop."""

    def log(self, record: dict[str, Any]) -> None:
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.cfg.run_dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def train(self, max_iters: int | None = None, max_seconds: float | None = None, progress: bool = True) -> int:
        """Train until cfg.iters (or max_iters more, or max_seconds); Ctrl-C or SIGTERM saves and stops."""
        if not self.data_loaded():
            self.load_data()
        self.set_train_mode()
        cfg = self.cfg
        end = cfg.iters if max_iters is None else min(cfg.iters, self.iteration + max_iters)
        start_time, start_iter = time.monotonic(), self.iteration

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_requested = True

        # The signal finishes the iteration, then the state is saved (only the main thread may set handlers).
        handled = (signal.SIGINT, signal.SIGTERM) if threading.current_thread() is threading.main_thread() else ()
        previous = {sig: signal.signal(sig, request_stop) for sig in handled}
        try:
            with ProgressBar(progress, end, self.iteration, self.name, self.progress_keys) as bar:
                while self.iteration < end and not self.stop_requested:
                    if max_seconds is not None and time.monotonic() - start_time > max_seconds:
                        break
                    cpu = time.process_time()
                    logs = self.step(*self.next_batch())
                    self.cpu_seconds += time.process_time() - cpu
                    self.iteration += 1
                    bar(self.iteration, logs)
                    if self.iteration % cfg.log_every == 0:
                        rate = (self.iteration - start_iter) / (time.monotonic() - start_time)
                        self.log({"iter": self.iteration, "it_per_s": rate, "cpu_s": round(self.cpu_seconds, 1),
                                  **logs})
                    if self.iteration % cfg.sample_every == 0:
                        self.on_sample()
                    if self.iteration % cfg.ckpt_every == 0:
                        self.save()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.save()
        return self.iteration


class ProgressBar:
    """A rich progress bar with rate, ETA and loss terms (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, done: int, name: str, keys: tuple[str, ...] | None) -> None:
        self.enabled, self.total, self.done, self.name, self.keys = enabled, total, done, name, keys
        self._bar: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 TextColumn("{task.fields[loss]}"))
            self._bar.__enter__()
            self._task = self._bar.add_task(f"train {self.name}", total=self.total, completed=self.done,
                                            rate="", loss="")
        return self

    def __call__(self, it: int, logs: dict[str, float]) -> None:
        if self._bar is not None:
            task = self._bar.tasks[0]
            rate = f"{task.speed:.2f} it/s" if task.speed else ""
            shown = {k: v for k, v in logs.items() if (k in self.keys if self.keys is not None else k != "lr")}
            loss = " ".join(f"{k}={v:.4f}" for k, v in shown.items())
            self._bar.update(self._task, completed=it, rate=rate, loss=loss)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
