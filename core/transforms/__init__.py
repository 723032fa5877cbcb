"""Differentiable image transforms and the real evaluation conditions.

All tensors are NCHW float. Images are in [-1, 1] unless a function says otherwise (the colour
conversions work on [0, 1] RGB). Each function has a thin ``nn.Module`` twin, kornia style.
"""

from core.transforms.color import (
    LabToRgb,
    RgbToLab,
    RgbToYcbcr,
    YcbcrToRgb,
    lab_to_rgb,
    rgb_to_lab,
    rgb_to_ycbcr,
    ycbcr_to_rgb,
)
from core.transforms.conditions import CONDITIONS, apply_condition, condition_names
from core.transforms.dwt import DWT, IDWT, dwt, idwt
from core.transforms.eot import DEFAULT_TRANSFORMS, EoT, TransformSpec
from core.transforms.filters import GaussianBlur, Rescale, gaussian_blur, gaussian_kernel1d, rescale
from core.transforms.jpeg import JPEG, DiffJPEG, diff_jpeg, jpeg, quantization_table

__all__ = [
    "CONDITIONS",
    "DEFAULT_TRANSFORMS",
    "DWT",
    "IDWT",
    "JPEG",
    "DiffJPEG",
    "EoT",
    "GaussianBlur",
    "LabToRgb",
    "Rescale",
    "RgbToLab",
    "RgbToYcbcr",
    "TransformSpec",
    "YcbcrToRgb",
    "apply_condition",
    "condition_names",
    "diff_jpeg",
    "dwt",
    "gaussian_blur",
    "gaussian_kernel1d",
    "idwt",
    "jpeg",
    "lab_to_rgb",
    "quantization_table",
    "rescale",
    "rgb_to_lab",
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
]
