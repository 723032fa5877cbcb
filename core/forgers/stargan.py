"""StarGAN (Choi et al., CVPR 2018, arXiv 1711.09020): generator and discriminator, state-dict compatible
with the reference release (``200000-G.ckpt``: see ``tests/fixtures/stargan_celeba128_*.keys.tsv``).
Fixed-Point GAN (:mod:`core.forgers.fpgan`) reuses these networks.
"""

from __future__ import annotations

import torch
from torch import nn

from core.forgers.base import FORGERS, ArchSpec, InstanceNorm

STARGAN_CONFIGS = {
    # The reference network: 8,430,528 generator parameters.
    "celeba128": dict(image_size=128, conv_dim=64, repeat_num=6, d_conv_dim=64, d_repeat_num=6),
    # Small enough to make real progress on a 2-core CPU.
    "compact64": dict(image_size=64, conv_dim=32, repeat_num=4, d_conv_dim=32, d_repeat_num=5),
    # The reference resolution at the compact width: the campaign's CPU-trainable 128 px editor. Its generator
    # has compact64's parameter shapes (fully convolutional), so compact64 weights can warm-start it.
    "compact128": dict(image_size=128, conv_dim=32, repeat_num=4, d_conv_dim=32, d_repeat_num=6),
    # For tests only.
    "tiny": dict(image_size=32, conv_dim=8, repeat_num=1, d_conv_dim=8, d_repeat_num=3),
}


class ResidualBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            InstanceNorm(dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, 1, 1, bias=False),
            InstanceNorm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


class StarGANGenerator(nn.Module):
    """x (N, 3, S, S) in [-1, 1] and c (N, A) in {0, 1} -> edited x (N, 3, S, S) in [-1, 1]."""

    def __init__(self, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3 + c_dim, conv_dim, 7, 1, 3, bias=False),
            InstanceNorm(conv_dim),
            nn.ReLU(inplace=True),
        ]
        dim = conv_dim
        for _ in range(2):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1, bias=False), InstanceNorm(dim * 2), nn.ReLU(inplace=True)]
            dim *= 2
        layers += [ResidualBlock(dim) for _ in range(repeat_num)]
        for _ in range(2):
            layers += [
                nn.ConvTranspose2d(dim, dim // 2, 4, 2, 1, bias=False),
                InstanceNorm(dim // 2),
                nn.ReLU(inplace=True),
            ]
            dim //= 2
        layers += [nn.Conv2d(dim, 3, 7, 1, 3, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        c_map = c.to(x.dtype)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
        return self.main(torch.cat([x, c_map], dim=1))


class StarGANDiscriminator(nn.Module):
    """PatchGAN critic with an auxiliary attribute classifier: x -> (realness map, attribute logits)."""

    def __init__(self, image_size: int = 128, conv_dim: int = 64, c_dim: int = 5, repeat_num: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, conv_dim, 4, 2, 1), nn.LeakyReLU(0.01)]
        dim = conv_dim
        for _ in range(1, repeat_num):
            layers += [nn.Conv2d(dim, dim * 2, 4, 2, 1), nn.LeakyReLU(0.01)]
            dim *= 2
        kernel = image_size // 2**repeat_num
        self.main = nn.Sequential(*layers)
        self.conv1 = nn.Conv2d(dim, 1, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(dim, c_dim, kernel, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.main(x)
        return self.conv1(h), self.conv2(h).flatten(1)


def _generator(config: dict, c_dim: int) -> nn.Module:
    return StarGANGenerator(config["conv_dim"], c_dim, config["repeat_num"])


def _discriminator(config: dict, c_dim: int) -> nn.Module:
    return StarGANDiscriminator(config["image_size"], config["d_conv_dim"], c_dim, config["d_repeat_num"])


def stargan_spec(name: str = "stargan", paper: str = "Choi et al., StarGAN, CVPR 2018 (arXiv 1711.09020)") -> ArchSpec:
    """StarGAN's architecture (networks and configs), under ``name`` for the forgers that share it."""
    return ArchSpec(name=name, paper=paper, build_generator=_generator, build_discriminator=_discriminator,
                    configs=STARGAN_CONFIGS, default_config="celeba128")


FORGERS.register("stargan")(stargan_spec)
