"""Image metrics for protections and their effect on forgers; every function returns one value per image.

Inputs are float tensors (N, C, H, W) in [-1, 1], the convention of the whole library:

- :func:`mse`: mean squared error on [-1, 1], the "L2 error" of Ruiz et al. 2020 (``F.mse_loss``).
- :func:`psnr`, :func:`ssim`: on the [0, 1] scale (data range 1), as image-quality papers report them.
- :func:`defended` / :func:`success_rate`: a protection defends an image when the forger's output on
  it differs from its output on the clean image by ``mse > threshold`` (0.05, Ruiz et al. 2020).
- :func:`nullification_error`: ``mse(G(x_adv, c), x)``, how far the edit of the protected image is
  from the unedited original (what "nullifying" defenses minimise).
- :func:`lpips`: LPIPS v0.1 (Zhang et al. 2018) with the real ImageNet AlexNet (or VGG16) trunk. Its
  weights come from ``veil weights`` (:mod:`core.weights`); without them it raises
  :class:`LPIPSUnavailable` rather than return a made-up number.

Each function has a thin ``nn.Module`` twin (:class:`MSE`, :class:`PSNR`, :class:`SSIM`, :class:`LPIPS`).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

import pytorch_msssim
import torch
from torch import Tensor, nn

from core.weights import (
    Backbone,
    WeightsError,
    backbone_spec,
    backbone_valid,
    load_backbone,
    load_lpips_linear,
    lpips_linear_valid,
    weights_dir,
)

SUCCESS_THRESHOLD = 0.05
SSIM_WINDOW = 11


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"expected a batch (N, ...) of images, got shape {tuple(a.shape)}")


# --- pixel metrics -------------------------------------------------------------------------------------


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Per-image mean squared difference on [-1, 1]: shape (N,)."""
    _check_pair(a, b)
    # float32 at least: half-precision squares of small differences would underflow.
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return (a.to(dtype) - b.to(dtype)).pow(2).flatten(1).mean(1)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """Per-image PSNR in dB on the [0, 1] scale (data range 2 on [-1, 1]); identical images give +inf."""
    # mse on [0, 1] is mse on [-1, 1] / 4, so 10 log10(1 / mse01) = 10 log10(4 / mse); 4 / 0 = inf.
    return 10 * torch.log10(4.0 / mse(a, b))


def psnr_from_mse(value: float) -> float:
    """:func:`psnr` of a mean squared error on [-1, 1] already computed (a float); 0 gives +inf."""
    return 10 * math.log10(4.0 / value) if value > 0 else math.inf


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Per-image SSIM on [0, 1] (Gaussian window 11, sigma 1.5; ``pytorch_msssim``): shape (N,).

    Images smaller than the window use the largest odd window that fits, instead of silently skipping
    the smoothing as ``pytorch_msssim`` would.
    """
    _check_pair(a, b)
    if a.dim() != 4:
        raise ValueError(f"ssim expects (N, C, H, W) images, got shape {tuple(a.shape)}")
    win = min(SSIM_WINDOW, a.shape[-2], a.shape[-1])
    win -= 1 - win % 2  # largest odd size <= win
    # channels_last: the library's Gaussian window is a grouped (depthwise) convolution, 3-8 times faster on
    # CPU in that layout (benchmarks/metrics_layout.py), to the same values within 1e-7.
    x, y = (((t.float() + 1) / 2).contiguous(memory_format=torch.channels_last) for t in (a, b))
    return pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False, win_size=win)


# --- defense outcome -----------------------------------------------------------------------------------


def defended(out_adv: Tensor, out_clean: Tensor, threshold: float = SUCCESS_THRESHOLD) -> Tensor:
    """Bool (N,): the forger's output on the protected image moved by ``mse > threshold`` (strictly)."""
    return mse(out_adv, out_clean) > threshold


def success_rate(out_adv: Tensor, out_clean: Tensor, threshold: float = SUCCESS_THRESHOLD) -> float:
    """Share of images whose edit was disrupted (:func:`defended`): the defense success rate of Ruiz et al."""
    hits = defended(out_adv, out_clean, threshold)
    if hits.numel() == 0:
        raise ValueError("success_rate of an empty batch is undefined")
    return float(hits.float().mean())


def nullification_error(out_adv: Tensor, x: Tensor) -> Tensor:
    """Per-image ``mse(G(x_adv, c), x)``: how far the edit of the protected image is from the original."""
    return mse(out_adv, x)


class MSE(nn.Module):
    """Module form of :func:`mse`."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return mse(a, b)


class PSNR(nn.Module):
    """Module form of :func:`psnr`."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return psnr(a, b)


class SSIM(nn.Module):
    """Module form of :func:`ssim`."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return ssim(a, b)


# --- LPIPS ---------------------------------------------------------------------------------------------

# LPIPS v0.1 ScalingLayer: maps [-1, 1] inputs to the ImageNet statistics the trunks were trained on.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class LPIPSUnavailable(RuntimeError):
    """The LPIPS weights are not on this machine; ``veil weights`` fetches and converts them."""


def backbone_features(name: str, state: dict[str, Tensor] | None = None) -> nn.Sequential:
    """A frozen torchvision-layout ``features`` Sequential of ``"alexnet"`` / ``"vgg16"`` (up to LPIPS's
    last tap: AlexNet relu5, VGG16 relu5_3), loaded with ``state`` or :func:`core.weights.load_backbone`.
    """
    spec = backbone_spec(name)
    convs = {c.index: c for c in spec.convs}
    layers: list[nn.Module] = []
    for i in range(spec.taps[-1] + 1):
        if i in convs:
            c = convs[i]
            layers.append(nn.Conv2d(c.in_ch, c.out_ch, c.kernel, stride=c.stride, padding=c.padding))
        elif i in spec.pools:
            layers.append(nn.MaxPool2d(*spec.pools[i]))
        else:
            layers.append(nn.ReLU())  # not in place: callers keep the tapped activations for autograd
    features = nn.Sequential(*layers)
    state = load_backbone(spec.name) if state is None else state
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()})
    return features.requires_grad_(False).eval()


def _min_side(spec: Backbone) -> int:
    """The smallest input side for which every conv and pool of ``spec`` still has an output."""
    convs = {c.index: c for c in spec.convs}

    def fits(side: int) -> bool:
        for i in range(spec.taps[-1] + 1):
            if i in convs:
                c = convs[i]
                side = (side + 2 * c.padding - c.kernel) // c.stride + 1
            elif i in spec.pools:
                kernel, stride = spec.pools[i]
                side = (side - kernel) // stride + 1
            if side < 1:
                return False
        return True

    return next(s for s in range(1, 1024) if fits(s))


def _unit(feat: Tensor, eps: float = 1e-10) -> Tensor:
    # LPIPS's normalize_tensor: unit length along channels (eps outside the sqrt, as in the reference).
    return feat / (feat.pow(2).sum(1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance (Zhang et al. 2018): ``LPIPS()(a, b)`` -> (N,), inputs in [-1, 1].

    The trunk's five ReLU outputs are unit-normalised along channels, their squared differences weighted
    by the learned 1x1 heads, averaged over space and summed over layers, exactly as ``lpips.LPIPS``
    (eval mode, ``spatial=False``). Parameters are frozen; the distance is differentiable in its inputs.
    ``net`` is ``"alex"`` (the reference for reporting) or ``"vgg"``.
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, net: str = "alex", directory: Path | None = None) -> None:
        super().__init__()
        spec = backbone_spec(net)
        try:
            trunk = load_backbone(spec.name, directory)
            heads = load_lpips_linear(spec.net, directory)
        except WeightsError as exc:
            raise LPIPSUnavailable(f"LPIPS-{spec.net} is unavailable: {exc}") from exc
        self.net = spec.net
        self.taps = spec.taps
        self.min_side = _min_side(spec)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.features = backbone_features(spec.name, trunk)
        self.lins = nn.ModuleList(nn.Conv2d(ch, 1, 1, bias=False) for ch in spec.tap_channels)
        self.lins.load_state_dict({k.replace("lin", "", 1): v for k, v in heads.items()})
        self.requires_grad_(False).eval()
        # channels_last: the backbone runs up to a quarter faster on CPU in it (a 1,200 px face region; 128 px
        # crops alike within the noise), to the same values (benchmarks/metrics_layout.py)
        self.memory_format = torch.channels_last

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        _check_pair(a, b)
        if a.dim() != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS expects RGB images (N, 3, H, W), got shape {tuple(a.shape)}")
        if min(a.shape[-2:]) < self.min_side:
            raise ValueError(f"LPIPS-{self.net} needs images of at least {self.min_side} px, got {tuple(a.shape)}")
        n = a.shape[0]
        # One pass over both images: half the Python overhead, same result.
        x = ((torch.cat([a, b]).to(self.shift.dtype) - self.shift) / self.scale).contiguous(
            memory_format=self.memory_format)
        total = torch.zeros(n, device=a.device, dtype=x.dtype)
        k = 0
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                feat = _unit(x)
                total = total + self.lins[k]((feat[:n] - feat[n:]).pow(2)).mean((1, 2, 3))
                k += 1
        return total


_LPIPS_CACHE: dict[tuple[str, str, str], LPIPS] = {}
_LPIPS_LOCK = threading.Lock()


def lpips(a: Tensor, b: Tensor, net: str = "alex") -> Tensor:
    """Per-image LPIPS v0.1 distance (N,) between ``a`` and ``b`` in [-1, 1] (0 = identical).

    The network is built once per (net, device, weights folder) and reused. Raises
    :class:`LPIPSUnavailable` when the weights are absent (run ``veil weights``).
    """
    net = backbone_spec(net).net
    key = (net, str(a.device), str(weights_dir()))
    with _LPIPS_LOCK:
        model = _LPIPS_CACHE.get(key)
        if model is None:
            model = LPIPS(net).to(a.device)
            _LPIPS_CACHE[key] = model
    return model(a, b)


def lpips_min_side(net: str = "alex") -> int:
    """The smallest image side LPIPS-``net`` accepts."""
    return _min_side(backbone_spec(net))


def lpips_available(net: str = "alex") -> bool:
    """Whether :func:`lpips` can run: the converted weights of ``net`` are in ``weights_dir()``."""
    spec = backbone_spec(net)
    return backbone_valid(spec) and lpips_linear_valid(spec)


__all__ = [
    "LPIPS",
    "MSE",
    "PSNR",
    "SSIM",
    "SUCCESS_THRESHOLD",
    "LPIPSUnavailable",
    "backbone_features",
    "defended",
    "lpips",
    "lpips_available",
    "mse",
    "nullification_error",
    "psnr",
    "ssim",
    "success_rate",
]
