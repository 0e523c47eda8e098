"""Centered, orthonormal 2-D FFT over the last two dimensions of complex tensors, and the 1-D FFT along the readout.

The shift/transform order is fastMRI's (``ifftshift`` -> ``fftn(norm="ortho")`` -> ``fftshift``), so
``fft2c(x)`` equals ``view_as_complex(fastmri.fft2c(view_as_real(x)))`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

from ..arrays import as_tensor

_DIMS = (-2, -1)


def _as_complex_tensor(x, name: str, ndim: int = 2) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):  # native byte order (torch refuses big-endian arrays), positive strides
        x, was_numpy = as_tensor(x, name, copy=False), True
    elif isinstance(x, torch.Tensor):
        was_numpy = False
    else:
        raise TypeError(f"{name} expects a numpy array or torch tensor, got {type(x).__name__}")
    if not x.is_complex():
        raise TypeError(f"{name} expects a complex tensor; use torch.view_as_complex for (..., 2) real views")
    if x.ndim < ndim:
        raise ValueError(f"{name} transforms the last {ndim} dimensions, got a tensor of shape {tuple(x.shape)}")
    return x, was_numpy


def fftn(t: torch.Tensor, dims=_DIMS, inverse: bool = False) -> torch.Tensor:
    """torch's orthonormal (inverse) FFT over ``dims``; empty tensors pass through (MKL refuses them)."""
    if t.numel() == 0:
        return t.clone()
    return (torch.fft.ifftn if inverse else torch.fft.fftn)(t, dim=dims, norm="ortho")


def fft2c(x):
    """k = F x: (..., H, W) complex image -> (..., H, W) centered k-space (numpy in, numpy out)."""
    t, was_numpy = _as_complex_tensor(x, "fft2c")
    k = torch.fft.fftshift(fftn(torch.fft.ifftshift(t, dim=_DIMS)), dim=_DIMS)
    return k.numpy() if was_numpy else k


def ifft2c(k):
    """x = F^H k: (..., H, W) centered k-space -> (..., H, W) complex image (numpy in, numpy out)."""
    t, was_numpy = _as_complex_tensor(k, "ifft2c")
    x = torch.fft.fftshift(fftn(torch.fft.ifftshift(t, dim=_DIMS), inverse=True), dim=_DIMS)
    return x.numpy() if was_numpy else x


def fft_rows(x, inverse: bool = False):
    """Centered orthonormal 1-D (inverse) FFT along dim -2 (the readout) of (..., H, W) complex data; numpy in,
    numpy out. With a column mask, ``fft_rows(k, inverse=True)`` is the hybrid space in which every image row is
    its own 1-D problem."""
    t, was_numpy = _as_complex_tensor(x, "fft_rows")
    out = torch.fft.fftshift(fftn(torch.fft.ifftshift(t, dim=-2), dims=(-2,), inverse=inverse), dim=-2)
    return out.numpy() if was_numpy else out
