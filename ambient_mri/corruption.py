"""What one training example is: a measurement y = A x0 + σ_n ε with its operator, and the further corruption Ã.

A batch is a dict of tensors:
    y           (B, C, H, W) k-space (multicoil), (B, H, W) k-space (singlecoil) or (B, C, H, W) images (pixel,
                identity); zeros where nothing was acquired
    mask        acquisition mask of A, broadcastable to the measurement (MRI: (B, 1, 1|H, W); images (B, 1, H, W))
    mask_tilde  mask of Ã ⊂ A, same shape; equal to ``mask`` when there is no further corruption
    maps        (B, C, H, W) complex coil maps (multicoil only)
    sigma_n     (B,) measurement noise level (0 for noise-free data)
"""

from __future__ import annotations

import torch

from .errors import AmbientMRIError
from .operators import Identity, LinearOperator, MultiCoilMRI, PixelMask, SingleCoilMRI, mask_4d
from .record import MRI_OPERATORS, OPERATORS

COND_CHANNELS = ("mask", "ones")


def make_operator(name: str, mask: torch.Tensor | None = None, maps: torch.Tensor | None = None) -> LinearOperator:
    """The operator of a batch: ``multicoil`` (maps, mask), ``singlecoil`` (mask), ``pixel`` (mask), ``identity``."""
    if name == "multicoil":
        return MultiCoilMRI(maps, mask)
    if name == "singlecoil":
        return SingleCoilMRI(mask)
    if name == "pixel":
        return PixelMask(mask)
    if name == "identity":
        return Identity()
    raise AmbientMRIError(f"unknown operator {name!r}; choose one of {', '.join(OPERATORS)}")


def is_complex(operator: str) -> bool:
    """MRI images are complex (B, H, W); pixel/identity images are real (B, C, H, W)."""
    return operator in MRI_OPERATORS


def image_mask(mask: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """Any mask (column (B,1,1,W), k-space (B,1,H,W), pixel (B,1,H,W)) as a (B, 1, H, W) float image."""
    return mask_4d(mask)[:, :1].to(torch.float32).expand(batch, 1, height, width)


def cond_channels(cond: tuple[str, ...], mask_tilde: torch.Tensor | None, batch: int, height: int, width: int,
                  device=None) -> torch.Tensor | None:
    """The network's extra input channels: the mask of Ã as an image and/or a ones channel (A-DPS uses both)."""
    chans = []
    for c in cond:
        if c == "mask":
            chans.append(image_mask(mask_tilde, batch, height, width).to(device))
        elif c == "ones":
            chans.append(torch.ones(batch, 1, height, width, device=device))
        else:
            raise AmbientMRIError(f"unknown condition channel {c!r}; choose from {', '.join(COND_CHANNELS)}")
    return torch.cat(chans, dim=1) if chans else None
