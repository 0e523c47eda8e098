"""ambient_mri: diffusion models trained only on corrupted data, and MRI reconstruction with them."""

from . import coils, data, masks, metrics
from .errors import AmbientMRIError, DataFileError, RecipeError
from .model import load_model
from .operators import (
    Identity,
    LinearOperator,
    MultiCoilMRI,
    PixelMask,
    SingleCoilMRI,
    adjointness_error,
    fft2c,
    ifft2c,
)
from .recon import reconstruct, reconstruct_file
from .training.trainer import train

__version__ = "0.1.0"

__all__ = [
    "AmbientMRIError",
    "DataFileError",
    "Identity",
    "LinearOperator",
    "MultiCoilMRI",
    "PixelMask",
    "RecipeError",
    "SingleCoilMRI",
    "adjointness_error",
    "coils",
    "data",
    "fft2c",
    "ifft2c",
    "load_model",
    "reconstruct",
    "reconstruct_file",
    "train",
    "masks",
    "metrics",
]
