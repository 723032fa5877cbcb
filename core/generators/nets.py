"""The perturbation generator networks of the one-pass methods: a small, width-configurable U-Net.

A :class:`PerturbationUNet` maps an input stack (the image, or its wavelet subbands, plus optional noise
channels) to unbounded perturbation logits of the same spatial size; the methods squash them with
``eps * tanh`` into their budget. It is fully convolutional: inputs whose sides are not a multiple of
``2**depth`` are padded (replicate) and the output is cropped back, so one network serves any size.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Named configs; ``image_size`` is the resolution the generator is trained at (the forgers' own:
# compact64 forgers for CPU work, celeba128 for the reference networks on a GPU).
GENERATOR_CONFIGS: dict[str, dict[str, Any]] = {
    "celeba128": dict(image_size=128, width=32, depth=4, noise_channels=1),
    "compact64": dict(image_size=64, width=16, depth=3, noise_channels=1),
    # the 128 px forgers' resolution at the compact width: the forger, not the U-Net, dominates a CPU step
    "compact128": dict(image_size=128, width=16, depth=4, noise_channels=1),
    # For tests only.
    "tiny": dict(image_size=32, width=8, depth=2, noise_channels=1),
}


def generator_config(name_or_dict: str | dict[str, Any] | None, default: str = "compact64") -> dict[str, Any]:
    """A config by name (with ``config_name`` added) or a copy of a dict (e.g. from a checkpoint)."""
    if name_or_dict is None:
        name_or_dict = default
    if isinstance(name_or_dict, dict):
        cfg = dict(name_or_dict)
        missing = {"image_size", "width", "depth"} - set(cfg)
        if missing:
            raise ValueError(f"generator config lacks {sorted(missing)}: {cfg}")
        cfg.setdefault("noise_channels", 1)
        return cfg
    if name_or_dict not in GENERATOR_CONFIGS:
        known = ", ".join(sorted(GENERATOR_CONFIGS))
        raise ValueError(f"unknown generator config {name_or_dict!r}; known: {known}")
    return dict(GENERATOR_CONFIGS[name_or_dict], config_name=name_or_dict)


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by GroupNorm (batch-independent: same output in train and
    eval mode, for any batch size) and LeakyReLU(0.2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, 1, 1),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c_out, c_out, 3, 1, 1),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class PerturbationUNet(nn.Module):
    """U-Net (Ronneberger et al. 2015), ``depth`` poolings, ``width * 2**i`` channels at level i.

    ``(N, in_channels, H, W)`` -> ``(N, out_channels, H, W)`` unbounded logits, any H and W.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"U-Net needs depth >= 1 and width >= 1, got depth {depth}, width {width}")
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([ConvBlock(in_channels, chans[0])])
        self.down.extend(ConvBlock(chans[i], chans[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(ConvBlock(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)[..., :h, :w]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
