"""Pixel masking: y = M ⊙ x for images (B, C, H, W), real or complex."""

from __future__ import annotations

import torch

from ..arrays import as_tensor
from ..errors import AmbientMRIError
from .base import LinearOperator


class PixelMask(LinearOperator):
    """A x = M ⊙ x. mask broadcastable to (B, C, H, W); usually (B, 1, H, W), shared across channels."""

    def __init__(self, mask):
        super().__init__()
        m = as_tensor(mask, "mask")
        if m.is_complex():
            raise AmbientMRIError(f"mask: must be real (1 = kept), got {m.dtype}")
        if not m.is_floating_point():
            m = m.to(torch.float32)
        self.register_buffer("mask", m, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask  # broadcasting must not grow x: a (B, H, W) mask would turn (B, 1, H, W) into (B, B, H, W)
        if m.ndim > x.ndim or any(a not in (1, b) for a, b in zip(m.shape[::-1], x.shape[::-1])):
            raise AmbientMRIError(f"images of shape {tuple(x.shape)} do not match mask {tuple(m.shape)} (images "
                                  "(B, C, H, W), mask broadcastable to them)")
        return self.mask.to(x.real.dtype) * x

    adjoint = forward
