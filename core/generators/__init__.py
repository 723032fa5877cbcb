"""The networks and helpers of the one-pass protection methods (:mod:`core.methods.one_pass`): the
perturbation U-Net and its configs, the VGG16 feature distance of their training losses, saliency masks.

The methods themselves (``retentive``, ``dwt-chroma``, ``initiative``) live in :mod:`core.methods` with
the iterative ones; :mod:`core.train.generator` trains them (``veil train generator``).
"""

from core.generators.features import FeatureDistance, feature_distance
from core.generators.nets import GENERATOR_CONFIGS, PerturbationUNet, count_parameters, generator_config
from core.generators.saliency import center_prior, saliency_mask, spectral_residual

__all__ = [
    "GENERATOR_CONFIGS",
    "FeatureDistance",
    "PerturbationUNet",
    "center_prior",
    "count_parameters",
    "feature_distance",
    "generator_config",
    "saliency_mask",
    "spectral_residual",
]
