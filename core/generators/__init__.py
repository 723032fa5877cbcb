"""One-pass protection methods: trained perturbation generators (``retentive``, ``dwt-chroma``, ``initiative``).

They register in :data:`core.methods.METHODS` like the iterative methods and are built the same way,
``create_method("retentive", forgers, checkpoint=None, pretrained=True, config=None, **options)``;
:mod:`core.train.generator` trains them (``veil train generator``).
"""

# core.methods first: it imports this package to register the methods, and the modules below need
# core.methods.base to be complete when they load.
import core.methods  # noqa: F401  (isort: skip)
from core.generators.base import ROLE, GeneratorMethod, RGBGeneratorMethod, locate_generator
from core.generators.dwt_chroma import DWTChroma
from core.generators.features import FeatureDistance, feature_distance
from core.generators.initiative import Initiative
from core.generators.nets import GENERATOR_CONFIGS, PerturbationUNet, count_parameters, generator_config
from core.generators.retentive import Retentive
from core.generators.saliency import center_prior, saliency_mask, spectral_residual

__all__ = [
    "GENERATOR_CONFIGS",
    "ROLE",
    "DWTChroma",
    "FeatureDistance",
    "GeneratorMethod",
    "Initiative",
    "PerturbationUNet",
    "RGBGeneratorMethod",
    "Retentive",
    "center_prior",
    "count_parameters",
    "feature_distance",
    "generator_config",
    "locate_generator",
    "saliency_mask",
    "spectral_residual",
]
