"""The face editors Veil defends against, behind one small interface.

A :class:`Forger` edits a batch of faces ``x`` (N, 3, H, W) in [-1, 1] towards attribute vectors ``c``
(N, A) of 0/1 floats over :attr:`Forger.attributes`. It works at its native ``image_size``; inputs of
another size are resampled (differentiably) in and out, so one protection can cover forgers trained at
different resolutions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.registry import Registry

log = logging.getLogger(__name__)

CELEBA5: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young")


class InstanceNorm(nn.InstanceNorm2d):
    """InstanceNorm2d that always normalises with the statistics of its input.

    The reference StarGAN keeps ``track_running_stats=True`` (its checkpoints hold running_mean/var) but
    never switches to eval mode, so it always used instance statistics. Plain InstanceNorm2d in eval mode
    would switch to the (meaningless) running averages and change every output; this keeps the keys and
    the reference behaviour in both modes.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=True, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: how to build its generator (and discriminator) from a named config."""

    name: str
    paper: str
    build_generator: Callable[..., nn.Module]
    build_discriminator: Callable[..., nn.Module]
    configs: dict[str, dict[str, Any]]
    default_config: str
    attributes: tuple[str, ...] = CELEBA5
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self, name_or_dict: str | dict[str, Any] | None) -> dict[str, Any]:
        if name_or_dict is None:
            name_or_dict = self.default_config
        if isinstance(name_or_dict, dict):
            return dict(name_or_dict)
        if name_or_dict not in self.configs:
            known = ", ".join(sorted(self.configs))
            raise ValueError(f"unknown {self.name} config {name_or_dict!r}; known: {known}")
        return dict(self.configs[name_or_dict], config_name=name_or_dict)


FORGERS: Registry[ArchSpec] = Registry("forger")


class Forger(nn.Module):
    """A frozen-or-trainable face editor: ``forger(x, c)`` returns the edited faces, same shape as ``x``."""

    def __init__(self, name: str, generator: nn.Module, config: dict[str, Any], attributes: tuple[str, ...]):
        super().__init__()
        self.name = name
        self.generator = generator
        self.config = config
        self.attributes = attributes
        self.image_size = int(config["image_size"])
        self.source: str = "random init"

    @property
    def compiled(self) -> bool:
        """Whether :func:`compile_forger` compiled the generator (a deep copy is not: it runs eagerly)."""
        return getattr(self.generator, "_compiled_call_impl", None) is not None

    @property
    def c_dim(self) -> int:
        return len(self.attributes)

    def edit(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Edit at the native resolution (no resampling)."""
        return self.generator(x, c)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if c.shape != (x.shape[0], self.c_dim):
            raise ValueError(f"expected attribute vectors of shape ({x.shape[0]}, {self.c_dim}), got {tuple(c.shape)}")
        size = x.shape[-2:]
        native = (self.image_size, self.image_size)
        if tuple(size) == native:
            return self.edit(x, c)
        small = F.interpolate(x, size=native, mode="bilinear", align_corners=False, antialias=True)
        out = self.edit(small, c.to(x.dtype))
        return F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)

    def freeze(self) -> Forger:
        """Eval mode, no parameter gradients: how protections use a forger."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self


def compile_forger(forger: Forger) -> float:
    """Compile ``forger``'s generator with TorchInductor and warm it up; returns the seconds it took.

    For a process that keeps its forgers resident (a worker): the StarGAN's pass runs about 1.5 times as fast
    on a CPU once compiled, and every protection and receipt makes many of them, but compiling costs seconds
    (tens with a cold Inductor cache), more than one photo's protection saves. ``nn.Module.compile`` compiles
    in place, so the weights, the state dict and every caller stay as they are. The warm-up runs the pass
    with and without gradients (PGD and the receipt) at batches 1, 2 and 16 with the batch marked dynamic:
    Dynamo specialises a batch of 1 and bounds the first dynamic range at 15, and after these three no batch
    size compiles again. If compiling fails (no C compiler, say), the forger stays as it was, uncompiled, and
    the error is logged. Idempotent.
    """
    if forger.compiled:
        return 0.0
    start = time.perf_counter()
    forger.generator.compile()
    param = next(forger.generator.parameters())
    try:
        for batch in (1, 2, 16):
            x = torch.zeros(batch, 3, forger.image_size, forger.image_size, dtype=param.dtype, device=param.device)
            c = torch.zeros(batch, forger.c_dim, dtype=param.dtype, device=param.device)
            if batch > 1:  # a batch of 1 is specialised whatever it is marked
                torch._dynamo.mark_dynamic(c, 0)
            with torch.no_grad():
                forger.edit(x, c)
            x.requires_grad_(True)
            if batch > 1:
                torch._dynamo.mark_dynamic(x, 0)
            torch.autograd.grad(forger.edit(x, c).sum(), x)  # no gradient reaches the forger's own weights
    except Exception as exc:  # any compiler failure: a slower forger beats a broken one
        forger.generator._compiled_call_impl = None  # what nn.Module.compile set: back to the eager call
        log.warning("forger %s not compiled, it runs as it was: %s", forger.name, str(exc).splitlines()[0])
    return time.perf_counter() - start
