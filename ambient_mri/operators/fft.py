"""Centered, orthonormal 2-D FFT over the last two dimensions of complex tensors, and the 1-D FFT along the readout.

The shift/transform order is fastMRI's (``ifftshift`` -> ``fftn(norm="ortho")`` -> ``fftshift``), so
``fft2c(x)`` equals ``view_as_complex(fastmri.fft2c(view_as_real(x)))`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch

_DIMS = (-2, -1)


def _as_complex_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), True
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")
    return x, False


def fft2c(x):
    """k = F x: (..., H, W) complex image -> (..., H, W) centered k-space (numpy in, numpy out)."""
    t, was_numpy = _as_complex_tensor(x)
    if not t.is_complex():
        raise TypeError("fft2c expects a complex tensor; use torch.view_as_complex for (..., 2) real views")
    k = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(t, dim=_DIMS), dim=_DIMS, norm="ortho"), dim=_DIMS)
    return k.numpy() if was_numpy else k


def ifft2c(k):
    """x = F^H k: (..., H, W) centered k-space -> (..., H, W) complex image (numpy in, numpy out)."""
    t, was_numpy = _as_complex_tensor(k)
    if not t.is_complex():
        raise TypeError("ifft2c expects a complex tensor; use torch.view_as_complex for (..., 2) real views")
    x = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(t, dim=_DIMS), dim=_DIMS, norm="ortho"), dim=_DIMS)
    return x.numpy() if was_numpy else x


def fft_rows(x, inverse: bool = False):
    """Centered orthonormal 1-D (inverse) FFT along dim -2 (the readout) of (..., H, W) complex data; numpy in,
    numpy out. With a column mask, ``fft_rows(k, inverse=True)`` is the hybrid space in which every image row is
    its own 1-D problem."""
    t, was_numpy = _as_complex_tensor(x)
    fn = torch.fft.ifft if inverse else torch.fft.fft
    out = torch.fft.fftshift(fn(torch.fft.ifftshift(t, dim=-2), dim=-2, norm="ortho"), dim=-2)
    return out.numpy() if was_numpy else out
