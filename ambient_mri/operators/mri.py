"""MRI forward models: y = M F S x (multi-coil) and y = M F x (single-coil).

Masks are real, 1 where a k-space sample was acquired, and broadcast over coils; maps and masks are per
example (batch dimension first), so one operator instance serves a whole batch without Python loops.

Speed (``MultiCoilMRI``, even H and W, i.e. every fastMRI size): the centred FFT is an ordinary FFT between two
checkerboards. Shifting by N/2 along an axis of even length N multiplies the other domain by (-1)^n, which gives

    fft2c(x) = s · P ⊙ fftn(P ⊙ x),   ifft2c(k) = s · P ⊙ ifftn(P ⊙ k),   P[i, j] = (-1)^(i+j),  s = (-1)^(H/2+W/2)

(ortho norm, last two dims). The operator folds P into the maps and s · P into the mask once, at construction:
forward = (s P M) ⊙ fftn((P S) ⊙ x) and adjoint = Σ_c conj(P S) ⊙ ifftn((s P M) ⊙ y). No shifts (each a full
copy) and no conj per call, and the only difference from the ``fft2c`` formula is the FFT's rounding. Odd sizes
use ``fft2c``/``ifft2c``.
"""

from __future__ import annotations

import torch

from ..arrays import as_tensor
from ..errors import AmbientMRIError
from .base import LinearOperator
from .fft import fft2c, fftn, ifft2c

_DIMS = (-2, -1)


def mask_4d(mask, name: str = "mask") -> torch.Tensor:
    """Mask (W,), (H,W), (B,H,W) or (B,1,H,W) -> a real (B|1, 1, H|1, W) tensor."""
    m = as_tensor(mask, name)
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
    if mask.shape[-1] not in (1, W) or mask.shape[-2] not in (1, H) or mask.shape[0] not in (1, shape[0]) or \
            mask.shape[1] not in (1, shape[1]):
        raise AmbientMRIError(f"mask of shape {tuple(mask.shape)} does not match {what} of shape {tuple(shape)}")


def _checkerboard(H: int, W: int, dtype: torch.dtype, device, sign: int = 1) -> torch.Tensor:
    """sign * P, P[i, j] = (-1)^(i+j), (H, W)."""
    i = torch.arange(H, device=device)[:, None]
    j = torch.arange(W, device=device)
    return (sign - 2 * sign * ((i + j) % 2)).to(dtype)


def _mul(a: torch.Tensor, b: torch.Tensor, inplace: bool) -> torch.Tensor:
    """a * b, written into ``a`` (a temporary the caller owns) when that gives the same shape and dtype."""
    fits = torch.promote_types(a.dtype, b.dtype) == a.dtype and torch.broadcast_shapes(a.shape, b.shape) == a.shape
    return a.mul_(b) if inplace and fits else a * b


class MultiCoilMRI(LinearOperator):
    """A x = M F (S x).

    Args:
        maps: coil sensitivities (B, C, H, W) complex.
        mask: sampling mask broadcastable to (B, 1, H, W); (W,) and (H, W) masks are shared by the batch.
    Shapes: forward (B, H, W) -> (B, C, H, W); adjoint (B, C, H, W) -> (B, H, W). An image or k-space batch of 1
    is broadcast against maps of batch B, and maps of batch 1 against any batch.

    ``maps`` and ``mask`` are buffers (``.to(device)`` moves them); numpy inputs are copied, tensors kept. The
    checkerboard-folded copies used by forward and adjoint (``_maps_c``, ``_maps_c_conj``, ``_mask_c``) are
    buffers too; they are recomputed when ``maps`` or ``mask`` is replaced or changed in place by a torch operation
    (seen by the tensor's version counter), and computed per call, with autograd, when ``maps`` or ``mask``
    requires grad. Writes that bypass the version counter (through ``.data``, or a numpy array sharing the
    tensor's memory) are not seen, as autograd does not see them: build a new operator after those.
    The mask's values weight the samples: 0/1 for a sampling mask; other real values keep A linear and A^H its
    adjoint (``reconstruct`` and ``further_mask`` take 0/1 only).
    """

    def __init__(self, maps, mask):
        super().__init__()
        maps = as_tensor(maps, "maps")
        if maps.ndim == 3:
            maps = maps[None]
        if maps.ndim != 4 or not maps.is_complex() or 0 in maps.shape[1:]:
            raise AmbientMRIError(
                f"maps: expected complex (B, C, H, W) with C, H, W >= 1, got {maps.dtype} of shape {tuple(maps.shape)}"
            )
        mask = mask_4d(mask)
        _check_broadcast(mask, tuple(maps.shape), "maps")
        self.register_buffer("maps", maps, persistent=False)
        self.register_buffer("mask", mask, persistent=False)
        self._refresh()

    # ------------------------------------------------------------------ derived constants
    @property
    def _even(self) -> bool:
        H, W = self.maps.shape[-2:]
        return H % 2 == 0 and W % 2 == 0

    def _derive(self, maps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(maps_c, mask_c) = (P ⊙ maps, s P ⊙ mask) for even sizes, else (maps, mask); dtypes kept."""
        if not self._even:
            return maps, mask
        H, W = maps.shape[-2:]
        sign = -1 if (H // 2 + W // 2) % 2 else 1
        return (maps * _checkerboard(H, W, maps.real.dtype, maps.device),
                mask * _checkerboard(H, W, mask.dtype, mask.device, sign))

    def _source_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in (self.maps, self.mask))

    def _refresh(self) -> None:
        _check_broadcast(self.mask, tuple(self.maps.shape), "maps")
        with torch.no_grad():
            maps_c, mask_c = self._derive(self.maps, self.mask)
        # odd sizes use maps and mask themselves: not stored twice (a second buffer would be copied twice by .to)
        self.register_buffer("_maps_c", maps_c if self._even else None, persistent=False)
        self.register_buffer("_mask_c", mask_c if self._even else None, persistent=False)
        self.register_buffer("_maps_c_conj", None, persistent=False)  # made by the first adjoint
        self._source = self._source_key()

    def _apply(self, fn, recurse=True):
        # .to() / .cuda() / .double() convert maps, mask and the derived buffers alike: still consistent
        out = super()._apply(fn, recurse)
        # but Module.to(<complex dtype>) also makes the real masks complex: keep them real (imaginary part 0)
        for name in ("mask", "_mask_c"):
            t = getattr(self, name)
            if t is not None and t.is_complex():
                setattr(self, name, t.real.contiguous())
        self._source = self._source_key()
        return out

    def _constants(self, conj: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(maps_c, or conj(maps_c) if ``conj``; mask_c; cached): fresh, with autograd, if maps or mask needs grad."""
        if torch.is_grad_enabled() and (self.maps.requires_grad or self.mask.requires_grad):
            maps_c, mask_c = self._derive(self.maps, self.mask)
            return (maps_c.conj() if conj else maps_c), mask_c, False
        if self._source != self._source_key():
            self._refresh()
        maps_c, mask_c = (self._maps_c, self._mask_c) if self._even else (self.maps, self.mask)
        if conj:
            if self._maps_c_conj is None:
                with torch.no_grad():
                    self._maps_c_conj = maps_c.conj().resolve_conj()
            maps_c = self._maps_c_conj
        return maps_c, mask_c, True

    # ------------------------------------------------------------------ operator
    def _check_image(self, x: torch.Tensor) -> None:
        B, _, H, W = self.maps.shape
        batch_ok = x.ndim == 3 and (x.shape[0] == B or 1 in (x.shape[0], B))
        if not batch_ok or x.shape[-2:] != (H, W):
            raise AmbientMRIError(f"image of shape {tuple(x.shape)} does not match maps {tuple(self.maps.shape)}")

    def _check_kspace(self, k: torch.Tensor) -> None:
        B = self.maps.shape[0]
        if k.ndim != 4 or k.shape[-3:] != self.maps.shape[-3:] or not (k.shape[0] == B or 1 in (k.shape[0], B)):
            raise AmbientMRIError(f"k-space of shape {tuple(k.shape)} does not match maps {tuple(self.maps.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_image(x)
        maps_c, mask_c, cached = self._constants()
        if self._even:
            k = fftn(maps_c * x[:, None])
        else:
            k = fft2c(maps_c * x[:, None])
        # in place only with constant (cached) factors: autograd then needs neither the FFT output nor the mask's
        return _mul(k, mask_c.to(k.real.dtype), cached)

    def adjoint(self, k: torch.Tensor) -> torch.Tensor:
        self._check_kspace(k)
        maps_c_conj, mask_c, cached = self._constants(conj=True)
        u = k * mask_c.to(k.real.dtype)
        img = fftn(u, inverse=True) if self._even else ifft2c(u)
        del u
        return torch.sum(_mul(img, maps_c_conj, cached), dim=1)


class SingleCoilMRI(LinearOperator):
    """A x = M F x. mask broadcastable to (B, H, W); forward and adjoint map (B, H, W) -> (B, H, W)."""

    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask_4d(mask)[:, 0], persistent=False)

    def _check(self, x: torch.Tensor, what: str) -> None:
        Bm, Hm, Wm = self.mask.shape
        ok = x.ndim >= 2 and Hm in (1, x.shape[-2]) and Wm in (1, x.shape[-1])
        if ok and x.ndim >= 3:
            ok = Bm in (1, x.shape[-3]) or x.shape[-3] == 1
        if not ok:
            raise AmbientMRIError(f"{what} of shape {tuple(x.shape)} does not match mask {tuple(self.mask.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x, "image")
        return _mul(fft2c(x), self.mask.to(x.real.dtype), not self.mask.requires_grad)

    def adjoint(self, k: torch.Tensor) -> torch.Tensor:
        self._check(k, "k-space")
        return ifft2c(self.mask.to(k.real.dtype) * k)
