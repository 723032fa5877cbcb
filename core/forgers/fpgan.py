"""Fixed-Point GAN (Siddiquee et al., ICCV 2019, arXiv 1908.06965): StarGAN's generator and discriminator
(:mod:`core.forgers.stargan`, same configs, same loader); it differs only in training (its identity loss,
:mod:`core.train.forger`).
"""

from __future__ import annotations

from core.forgers.base import FORGERS, ArchSpec
from core.forgers.stargan import stargan_spec


@FORGERS.register("fpgan")
def fpgan_spec() -> ArchSpec:
    return stargan_spec("fpgan", "Siddiquee et al., Fixed-Point GAN, ICCV 2019 (arXiv 1908.06965)")
