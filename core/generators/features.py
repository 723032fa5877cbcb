"""A perceptual (feature-level) distance for training the generators: frozen ImageNet VGG16 features.

The VGG16 trunk comes from ``veil weights`` (:func:`core.metrics.backbone_features`); it is never
downloaded here. Without it :func:`feature_distance` logs a warning once and returns None, and the
trainers leave the feature term out instead of inventing one.
"""

from __future__ import annotations

import logging
import threading

import torch
from torch import Tensor, nn

from core.metrics import LPIPS_SCALE, LPIPS_SHIFT, backbone_features
from core.weights import WeightsError, weights_dir

log = logging.getLogger(__name__)

# torchvision VGG16 ``features`` indices of relu1_2, relu2_2, relu3_3: the usual perceptual-loss taps,
# cheap enough for training (relu4/5 quadruple the cost and need larger images).
VGG_TAPS = (3, 8, 15)


class FeatureDistance(nn.Module):
    """Mean over taps of the squared difference of channel-unit-normalised VGG16 activations (an
    LPIPS-VGG with uniform layer weights): ``(a, b)`` in [-1, 1] -> (N,), differentiable in both."""

    shift: Tensor
    scale: Tensor

    def __init__(self, features: nn.Sequential, taps: tuple[int, ...] = VGG_TAPS) -> None:
        super().__init__()
        self.taps = taps
        self.features = nn.Sequential(*list(features)[: taps[-1] + 1])
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        n = a.shape[0]
        x = (torch.cat([a, b]) - self.shift) / self.scale
        total = a.new_zeros(n)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                unit = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + (unit[:n] - unit[n:]).pow(2).sum(1).mean((1, 2))
        return total / len(self.taps)


_CACHE: dict[tuple[str, str], FeatureDistance | None] = {}
_LOCK = threading.Lock()


def feature_distance(device: torch.device | str = "cpu") -> FeatureDistance | None:
    """The VGG16 :class:`FeatureDistance` on ``device``, built once per (weights folder, device); None
    (with a logged warning) when the VGG16 weights are not on this machine."""
    key = (str(weights_dir()), str(device))
    with _LOCK:
        if key not in _CACHE:
            try:
                _CACHE[key] = FeatureDistance(backbone_features("vgg16")).to(device)
            except WeightsError as exc:
                log.warning("VGG16 weights unavailable (%s); run `veil weights`. Training without the "
                            "feature-level loss term.", exc)
                _CACHE[key] = None
        return _CACHE[key]
