"""Networks: DDPM++ UNet, EDM preconditioning, complex <-> channel conversion."""

from .complex import channels_to_complex, complex_to_channels
from .precond import EDMPrecond, build_denoiser, count_parameters, denoiser_config_defaults
from .unet import UNet

__all__ = [
    "EDMPrecond",
    "UNet",
    "build_denoiser",
    "channels_to_complex",
    "complex_to_channels",
    "count_parameters",
    "denoiser_config_defaults",
]
