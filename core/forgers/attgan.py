"""AttGAN (He et al., "AttGAN: Facial Attribute Editing by Only Changing What You Want", IEEE TIP 2019,
arXiv 1711.10678): a convolutional encoder-decoder with skip connections, the attribute vector tiled and
concatenated at the bottleneck (and injected into the first decoder layers).

Attributes arrive as 0/1 like every forger's; the network sees ``(2c - 1) * attr_scale`` as in the
reference (``thres_int`` 0.5).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from core.forgers.base import FORGERS, ArchSpec

ATTGAN_CONFIGS = {
    # The reference 128 px network (enc/dec 5 layers, 1 shortcut, 1 injection).
    "celeba128": dict(image_size=128, dim=64, layers=5, max_dim=1024, shortcut_layers=1, inject_layers=1,
                      attr_scale=0.5, d_dim=64, d_fc_dim=1024),
    "compact64": dict(image_size=64, dim=32, layers=4, max_dim=512, shortcut_layers=1, inject_layers=1,
                      attr_scale=0.5, d_dim=32, d_fc_dim=256),
    # The reference depth at 128 px, half the reference widths: CPU-trainable.
    "compact128": dict(image_size=128, dim=32, layers=5, max_dim=512, shortcut_layers=1, inject_layers=1,
                       attr_scale=0.5, d_dim=32, d_fc_dim=256),
    # compact64's depth at 128 px: its generator has compact64's parameter shapes (fully convolutional), so the
    # shipped 64 px weights can warm-start it, as they did the 128 px StarGAN; its bottleneck is 8x8, not 4x4.
    "compact128l4": dict(image_size=128, dim=32, layers=4, max_dim=512, shortcut_layers=1, inject_layers=1,
                         attr_scale=0.5, d_dim=32, d_fc_dim=256),
    # compact128l4 with a second shortcut (the encoder's 32x32 features into the decoder): the AttGAN paper's
    # lever for reconstruction. compact128l4's weights start it as the same function (the new input channels
    # start at zero: scripts/forger_campaign.py's grown()); the default attgan-compact128 has this config.
    "compact128l4s2": dict(image_size=128, dim=32, layers=4, max_dim=512, shortcut_layers=2, inject_layers=1,
                           attr_scale=0.5, d_dim=32, d_fc_dim=256),
    "tiny": dict(image_size=32, dim=8, layers=3, max_dim=32, shortcut_layers=1, inject_layers=1,
                 attr_scale=0.5, d_dim=8, d_fc_dim=16),
}


def _down(n_in: int, n_out: int, norm: Callable[[int], nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(n_in, n_out, 4, 2, 1, bias=False), norm(n_out), nn.LeakyReLU(0.2, inplace=True))


def _up(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(n_in, n_out, 4, 2, 1, bias=False), nn.BatchNorm2d(n_out), nn.ReLU(inplace=True)
    )


class AttGANGenerator(nn.Module):
    """x (N, 3, S, S) in [-1, 1], c (N, A) in {0, 1} -> edited x (N, 3, S, S) in [-1, 1]."""

    def __init__(self, c_dim: int, dim: int, layers: int, max_dim: int, shortcut_layers: int,
                 inject_layers: int, attr_scale: float, **_: object) -> None:
        super().__init__()
        self.shortcut_layers = min(shortcut_layers, layers - 1)
        self.inject_layers = min(inject_layers, layers - 1)
        self.attr_scale = attr_scale
        widths = [min(dim * 2**i, max_dim) for i in range(layers)]
        self.enc = nn.ModuleList()
        n_in = 3
        for w in widths:
            self.enc.append(_down(n_in, w, nn.BatchNorm2d))
            n_in = w
        self.dec = nn.ModuleList()
        n_in = widths[-1] + c_dim
        for i in range(layers - 1):
            n_out = widths[layers - 2 - i]
            self.dec.append(_up(n_in, n_out))
            n_in = n_out
            if i < self.shortcut_layers:
                n_in += widths[layers - 2 - i]
            if i < self.inject_layers:
                n_in += c_dim
        self.dec.append(nn.Sequential(nn.ConvTranspose2d(n_in, 3, 4, 2, 1), nn.Tanh()))

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for block in self.enc:
            x = block(x)
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        a = ((2 * c - 1) * self.attr_scale).to(feats[-1].dtype)[:, :, None, None]
        h = torch.cat([feats[-1], a.expand(-1, -1, *feats[-1].shape[2:])], dim=1)
        for i, block in enumerate(self.dec):
            h = block(h)
            if i < self.shortcut_layers:
                h = torch.cat([h, feats[-2 - i]], dim=1)
            if i < self.inject_layers:
                h = torch.cat([h, a.expand(-1, -1, *h.shape[2:])], dim=1)
        return h

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), c)


class AttGANDiscriminator(nn.Module):
    """Critic with an attribute classifier head: x -> (realness (N, 1), attribute logits (N, A))."""

    def __init__(self, image_size: int, c_dim: int, d_dim: int, layers: int, max_dim: int, d_fc_dim: int,
                 **_: object) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        n_in = 3
        for i in range(layers):
            n_out = min(d_dim * 2**i, max_dim)
            blocks.append(_down(n_in, n_out, lambda n: nn.InstanceNorm2d(n, affine=True)))
            n_in = n_out
        self.conv = nn.Sequential(*blocks)
        flat = n_in * (image_size // 2**layers) ** 2

        def head(n_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(flat, d_fc_dim), nn.ReLU(inplace=True), nn.Linear(d_fc_dim, n_out))

        self.fc_adv = head(1)
        self.fc_cls = head(c_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x).flatten(1)
        return self.fc_adv(h), self.fc_cls(h)


FORGERS.register("attgan")(
    lambda: ArchSpec(
        name="attgan",
        paper="He et al., AttGAN, IEEE TIP 2019 (arXiv 1711.10678)",
        build_generator=lambda cfg, c_dim: AttGANGenerator(c_dim, **cfg),
        build_discriminator=lambda cfg, c_dim: AttGANDiscriminator(c_dim=c_dim, **cfg),
        configs=ATTGAN_CONFIGS,
        default_config="celeba128",
    )
)
