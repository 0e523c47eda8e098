"""Per-slice math shared by the preparation of training data and the reconstruction of new scans: readout crop,
noise level, calibration (ACS) columns, coil compression, ESPIRiT maps and the intensity scale — all from the
acquired columns only (``data.prepared.SCALE_RULE`` states the scale)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..coils import espirit, sense_combine
from ..errors import AmbientMRIError
from ..masks import calibration_width
from ..operators import fft_rows, ifft2c

SCALE_PERCENTILE = 99.0
MAX_CALIB_WIDTH = 32


def _readout_image(kspace: np.ndarray) -> torch.Tensor:
    """Centred orthonormal 1-D inverse FFT along the readout (rows) of k-space (..., H0, L): the hybrid
    (x, k_y) space in which each acquired column is independent."""
    return fft_rows(torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64)), inverse=True)


def row_crop(kspace: np.ndarray, rows: int) -> np.ndarray:
    """Crop the readout (row) oversampling of k-space (..., H0, L) to ``rows`` image rows: centred 1-D inverse
    FFT along rows, fastMRI's centre-crop offset (H0 - rows) // 2, centred FFT back. Columns are independent,
    so this needs only the acquired columns and equals ifft2c -> row crop -> fft2c on the zero-filled data."""
    H0 = kspace.shape[-2]
    if rows == H0:
        return np.ascontiguousarray(kspace, dtype=np.complex64)
    if not 0 < rows < H0:
        raise AmbientMRIError(f"cannot crop {H0} k-space rows to {rows} image rows")
    x = _readout_image(kspace)
    top = (H0 - rows) // 2
    x = x[..., top: top + rows, :]
    return fft_rows(x).numpy()


def noise_std(acquired: np.ndarray, edge: float = 0.125) -> float:
    """Thermal noise per k-space sample of the acquired columns (C, H0, L), from the image rows at both ends of
    the readout field of view (``edge`` of H0 each): fastMRI's 2x readout oversampling leaves them empty of
    anatomy. Complex Gaussian noise of per-sample variance σ² has median |v| = σ √ln 2; the median ignores the
    few rows an object may reach. The centred 1-D inverse FFT is orthonormal, so σ is the k-space level. Without
    readout oversampling the end rows may hold anatomy and the estimate is then too high (pass the level instead)."""
    H0 = acquired.shape[-2]
    n = max(1, int(round(edge * H0)))
    x = _readout_image(acquired)
    outer = torch.cat([x[..., :n, :], x[..., H0 - n:, :]], dim=-2)
    return float(outer.abs().median()) / float(np.sqrt(np.log(2)))


def calibration_columns(mask: np.ndarray, calib_width: int | None = None) -> np.ndarray:
    """Column indices of the calibration block: the ``calib_width`` centre columns [W//2 - n//2, W//2 - n//2 + n)
    (sigpy's centred crop); default n = min(largest fully acquired centred block, 32)."""
    cols = np.asarray(mask).reshape(-1) != 0
    W = cols.shape[0]
    avail = calibration_width(cols[None].astype(np.float32))
    n = min(avail, MAX_CALIB_WIDTH) if calib_width is None else int(calib_width)
    if n > avail:
        raise AmbientMRIError(f"calib_width {n} exceeds the {avail} fully acquired centre (ACS) columns")
    if n < 1:
        raise AmbientMRIError("the centre column was not acquired: no calibration (ACS) region")
    start = W // 2 - n // 2
    return np.arange(start, start + n)


def coil_compression(acs: np.ndarray, coils: int) -> np.ndarray:
    """(C, K) compression matrix U_K from the SVD over coils of calibration data (C, ...) only:
    virtual coils = U_K^H k. Deterministic for given input."""
    C = acs.shape[0]
    if not 1 <= coils <= C:
        raise AmbientMRIError(f"cannot compress {C} coils to {coils} virtual coils")
    a = np.asarray(acs, dtype=np.complex128).reshape(C, -1)
    u, _, _ = np.linalg.svd(a, full_matrices=False)
    return np.ascontiguousarray(u[:, :coils], dtype=np.complex64)


def apply_compression(kspace: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """(C, ...) -> (K, ...) virtual coils U^H k (``matrix`` None: unchanged)."""
    if matrix is None:
        return kspace
    C = kspace.shape[0]
    out = matrix.conj().T @ kspace.reshape(C, -1)
    return np.ascontiguousarray(out.reshape(matrix.shape[1], *kspace.shape[1:]), dtype=np.complex64)


def zero_filled(acquired: np.ndarray, lines: np.ndarray, width: int) -> np.ndarray:
    """(C, H, L) acquired columns + their indices -> (C, H, W) k-space with zeros elsewhere."""
    keep = lines >= 0
    out = np.zeros((*acquired.shape[:-1], width), dtype=np.complex64)
    out[..., lines[keep]] = acquired[..., : int(keep.sum())]
    return out


def calibration_scale(kspace: np.ndarray, maps: np.ndarray, calib_cols: np.ndarray) -> float:
    """The intensity scale of ``SCALE_RULE`` from zero-filled acquired k-space (C, H, W) and maps (C, H, W)."""
    block = np.zeros_like(kspace)
    block[..., calib_cols] = kspace[..., calib_cols]
    img = sense_combine(ifft2c(block), maps)
    return float(np.percentile(np.abs(img), SCALE_PERCENTILE))


@dataclass
class PreparedSlice:
    """One slice, prepared from its acquired columns only."""

    kspace: np.ndarray           # (K, H, L) complex64, acquired columns, not normalised
    maps: np.ndarray             # (K, H, W) complex64
    scale: float
    compression: np.ndarray | None  # (C, K) or None
    calib_width: int
    kernel_width: int


def prepare_slice(acquired: np.ndarray, lines: np.ndarray, width: int, rows: int | None = None,
                  coils: int | None = None, calib_width: int | None = None) -> PreparedSlice:
    """Acquired columns (C, H0, L) of one slice at column indices ``lines`` (L,) of a width-W grid ->
    readout crop to ``rows``, coil compression to ``coils`` (SVD of the calibration columns), ESPIRiT maps
    and the ``SCALE_RULE`` scale, all from the calibration columns. Raises AmbientMRIError when the
    calibration region is too narrow or the data are all zero there."""
    from ..coils import default_kernel_width

    lines = np.asarray(lines)
    k = row_crop(acquired, rows or acquired.shape[-2])
    mask = np.zeros(width, np.float32)
    mask[lines[lines >= 0]] = 1
    calib = calibration_columns(mask, calib_width)
    pos = np.searchsorted(lines[lines >= 0], calib)
    U = None
    if coils is not None and coils != k.shape[0]:
        U = coil_compression(k[..., pos], coils)
        k = apply_compression(k, U)
    full = zero_filled(k, lines, width)
    if not np.any(full[..., calib]):
        raise AmbientMRIError("the calibration (ACS) columns are all zero")
    kw = default_kernel_width(len(calib))
    maps = espirit(full, calib_width=len(calib), kernel_width=kw, mask=mask[None])
    scale = calibration_scale(full, maps, calib)
    if not np.isfinite(scale) or scale <= 0:
        raise AmbientMRIError(f"intensity scale from the calibration data is {scale} (expected > 0)")
    return PreparedSlice(kspace=k, maps=np.asarray(maps, np.complex64), scale=scale, compression=U,
                         calib_width=len(calib), kernel_width=kw)


