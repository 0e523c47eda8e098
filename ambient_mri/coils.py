"""Coil sensitivities from the calibration (ACS) lines only, and coil combination."""

from __future__ import annotations

import inspect

import numpy as np
import torch

from .errors import AmbientMRIError
from .masks import calibration_width

MIN_ACS_LINES = 6  # fewer: an error (sigpy's ESPIRiT on a 4-line region returns maps that are zero everywhere)


def default_kernel_width(calib_width: int) -> int:
    """ESPIRiT kernel width for a calibration width.

    sigpy's default 6 needs ~18+ calibration lines; on 10 lines it gives maps whose SENSE image is unusable
    (REFERENCE.md), so narrow regions get a smaller kernel (10 -> 4, 12-17 -> 5).
    """
    if calib_width >= 18:
        return 6
    return int(max(3, min(5, (calib_width - 2) // 2)))


def _to_numpy(x) -> tuple[np.ndarray, bool]:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy(), True
    return np.asarray(x), False


def espirit(kspace, calib_width: int | None = None, kernel_width: int | None = None, thresh: float = 0.02,
            crop: float = 0.95, max_iter: int = 100, mask=None, device=None, show_pbar: bool = False,
            **sigpy_options):
    """ESPIRiT maps from acquired k-space, using only the fully acquired centre columns (ACS).

    kspace: (C, H, W) or (S, C, H, W) complex, zeros where not acquired. mask: optional column/2-D mask of
    the acquisition; k-space outside it is zeroed first so nothing else can leak into calibration.
    calib_width: default = the symmetric fully acquired centre width (capped at 32). The named options and any
    other ``sigpy_options`` go to ``sigpy.mri.app.EspiritCalib`` (an unknown one is an error naming it; maps only,
    so ``output_eigenvalue`` is refused). Returns maps with the shape and array type of ``kspace``.
    """
    import sigpy as sp
    import sigpy.mri

    if sigpy_options.get("output_eigenvalue"):
        raise AmbientMRIError("espirit returns maps only: output_eigenvalue is not supported")
    sigpy_options.pop("output_eigenvalue", None)
    unknown = sorted(set(sigpy_options) - (set(inspect.signature(sigpy.mri.app.EspiritCalib).parameters) - {"ksp"}))
    if unknown:
        raise AmbientMRIError(f"espirit: unknown option(s) {', '.join(unknown)} for sigpy's EspiritCalib")
    k, is_torch = _to_numpy(kspace)
    if not np.iscomplexobj(k) or k.ndim not in (3, 4):
        raise AmbientMRIError(f"espirit expects complex (C, H, W) or (S, C, H, W) k-space, got {k.dtype} {k.shape}")
    if not np.isfinite(k).all():
        raise AmbientMRIError("espirit: k-space contains NaN or Inf")
    if mask is not None:
        m, _ = _to_numpy(mask)
        k = k * np.broadcast_to(m.astype(np.float32), k.shape[-2:] if m.ndim <= 2 else m.shape)
    acs = calibration_width(np.abs(k).reshape(-1, k.shape[-1]) > 0 if mask is None else m)
    if calib_width is None:
        calib_width = min(acs, 32)
    if calib_width < MIN_ACS_LINES:
        raise AmbientMRIError(
            f"espirit: need at least {MIN_ACS_LINES} fully acquired centre (ACS) lines to estimate coil maps, found "
            f"{acs}" + ("" if calib_width == acs else f" (calib_width {calib_width})") + "; acquire more ACS lines "
            "or pass maps explicitly"
        )
    if calib_width > acs:
        raise AmbientMRIError(f"espirit: calib_width {calib_width} exceeds the {acs} acquired ACS lines")
    kw = kernel_width or default_kernel_width(calib_width)
    dev = sp.Device(-1 if device is None else device)
    batch = k if k.ndim == 4 else k[None]
    maps = np.stack([
        sigpy.mri.app.EspiritCalib(s, calib_width=calib_width, thresh=thresh, kernel_width=kw, crop=crop,
                                   max_iter=max_iter, device=dev, show_pbar=show_pbar, **sigpy_options).run()
        for s in batch
    ]).astype(k.dtype if k.dtype == np.complex128 else np.complex64)
    empty = [i for i, mp in enumerate(maps) if not np.any(mp)]
    if empty:
        raise AmbientMRIError(f"espirit: the maps of slice(s) {empty} are zero everywhere (no eigenvalue above crop "
                              f"{crop} from {calib_width} ACS lines): acquire more ACS lines or pass maps explicitly")
    maps = maps if k.ndim == 4 else maps[0]
    return torch.from_numpy(maps) if is_torch else maps


def rss(coil_images, dim: int = -3):
    """Root sum of squares over the coil dimension (numpy or torch, real or complex)."""
    if isinstance(coil_images, torch.Tensor):
        return torch.sqrt(torch.sum(torch.abs(coil_images) ** 2, dim=dim))
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=dim))


def sense_combine(coil_images, maps, dim: int = -3):
    """Least-squares coil combination Σ conj(S_c) x_c / Σ |S_c|² (zero where the maps vanish); numpy or torch."""
    num = (maps.conj() * coil_images).sum(dim)
    den = (abs(maps) ** 2).sum(dim)
    return num / (den + (den == 0))
