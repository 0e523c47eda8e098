"""Forward operators: what a measurement is."""

from .base import AdjointOperator, ComposedOperator, Identity, LinearOperator, adjointness_error, inner
from .fft import fft2c, fft_rows, ifft2c
from .mri import MultiCoilMRI, SingleCoilMRI, mask_4d
from .pixel import PixelMask

__all__ = [
    "AdjointOperator",
    "ComposedOperator",
    "Identity",
    "LinearOperator",
    "MultiCoilMRI",
    "PixelMask",
    "SingleCoilMRI",
    "adjointness_error",
    "fft2c",
    "fft_rows",
    "ifft2c",
    "inner",
    "mask_4d",
]
