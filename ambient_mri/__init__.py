"""ambient_mri: diffusion models trained only on corrupted data, and MRI reconstruction with them.

``import ambient_mri`` loads only the errors and the operators (torch); everything else — ``train``,
``reconstruct``, ``load_model``, the ``coils``/``data``/``masks``/``metrics`` modules — loads on first use.
"""

from __future__ import annotations

import importlib

from .errors import AmbientMRIError, BelowZeroFilledWarning, DataFileError, RecipeError
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
from .version import __version__  # noqa: F401 - the package's version, as every package has it

_LAZY = {"train": ".training.trainer", "reconstruct": ".recon", "reconstruct_file": ".recon",
         "load_model": ".model"}
_MODULES = ("coils", "data", "masks", "metrics")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    elif name in _MODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'ambient_mri' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_MODULES))


__all__ = [
    "AmbientMRIError",
    "BelowZeroFilledWarning",
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
