"""MRI forward models: y = M F S x (multi-coil) and y = M F x (single-coil).

Masks are real, 1 where a k-space sample was acquired, and broadcast over coils; maps and masks are per
example (batch dimension first), so one operator instance serves a whole batch without Python loops.
"""

from __future__ import annotations

import torch

from ..errors import AmbientMRIError
from .base import LinearOperator
from .fft import fft2c, ifft2c


def _tensor(a, name: str) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a
    try:
        return torch.as_tensor(a)
    except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
        raise AmbientMRIError(f"{name}: cannot be turned into a tensor ({e})") from None


def mask_4d(mask, name: str = "mask") -> torch.Tensor:
    """Mask (W,), (H,W), (B,H,W) or (B,1,H,W) -> a real (B|1, 1, H|1, W) tensor."""
    m = _tensor(mask, name)
    if m.is_complex():
        raise AmbientMRIError(f"{name}: must be real (1 = acquired), got {m.dtype}")
    if m.ndim == 1:
        m = m[None, None, None, :]
    elif m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    elif m.ndim != 4:
        raise AmbientMRIError(f"{name}: expected (W,), (H,W), (B,H,W) or (B,1,H,W), got shape {tuple(m.shape)}")
    if not m.is_floating_point():
        m = m.to(torch.float32)
    return m


def _check_broadcast(mask: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    H, W = shape[-2:]
    if mask.shape[-1] not in (1, W) or mask.shape[-2] not in (1, H) or mask.shape[0] not in (1, shape[0]):
        raise AmbientMRIError(f"mask of shape {tuple(mask.shape)} does not match {what} of shape {tuple(shape)}")


class MultiCoilMRI(LinearOperator):
    """A x = M F (S x).

    Args:
        maps: coil sensitivities (B, C, H, W) complex.
        mask: sampling mask broadcastable to (B, 1, H, W); (W,) and (H, W) masks are shared by the batch.
    Shapes: forward (B, H, W) -> (B, C, H, W); adjoint (B, C, H, W) -> (B, H, W).
    """

    def __init__(self, maps, mask):
        super().__init__()
        maps = _tensor(maps, "maps")
        if maps.ndim == 3:
            maps = maps[None]
        if maps.ndim != 4 or not maps.is_complex():
            raise AmbientMRIError(
                f"maps: expected complex (B, C, H, W), got {maps.dtype} of shape {tuple(maps.shape)}"
            )
        mask = mask_4d(mask)
        _check_broadcast(mask, tuple(maps.shape), "maps")
        self.register_buffer("maps", maps, persistent=False)
        self.register_buffer("mask", mask, persistent=False)

    def _check_image(self, x: torch.Tensor) -> None:
        B, _, H, W = self.maps.shape
        batch_ok = x.ndim == 3 and (x.shape[0] == B or 1 in (x.shape[0], B))
        if not batch_ok or x.shape[-2:] != (H, W):
            raise AmbientMRIError(f"image of shape {tuple(x.shape)} does not match maps {tuple(self.maps.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_image(x)
        return self.mask.to(x.real.dtype) * fft2c(self.maps * x[:, None])

    def adjoint(self, k: torch.Tensor) -> torch.Tensor:
        if k.ndim != 4 or k.shape[-3:] != self.maps.shape[-3:]:
            raise AmbientMRIError(f"k-space of shape {tuple(k.shape)} does not match maps {tuple(self.maps.shape)}")
        return torch.sum(self.maps.conj() * ifft2c(self.mask.to(k.real.dtype) * k), dim=1)


class SingleCoilMRI(LinearOperator):
    """A x = M F x. mask broadcastable to (B, H, W); forward and adjoint map (B, H, W) -> (B, H, W)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask_4d(mask)[:, 0], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(x.real.dtype) * fft2c(x)

    def adjoint(self, k: torch.Tensor) -> torch.Tensor:
        return ifft2c(self.mask.to(k.real.dtype) * k)
