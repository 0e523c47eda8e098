"""The prepared-volume format (``ambient_mri.prepared/1``) and ``PreparedSlices``, the training dataset over it.

One prepared HDF5 file = one volume, written by ``ambient-mri prepare fastmri`` (data_tools/prepare.py).
It holds only what was acquired, plus what was computed from it:

    kspace   (S, C, H, L) complex64  the acquired k-space columns (after the readout crop and coil compression),
                                     not normalised; columns past a slice's line count are zero
    lines    (S, L) int32            column index (0..W-1) of each stored column; -1 pads slices with fewer lines
    mask     (S, W) float32          1 on the acquired columns
    maps     (S, C, H, W) complex64  ESPIRiT maps from the calibration (ACS) columns only
    scale    (S,) float32            intensity scale (``SCALE_RULE``); training divides k-space by it
    attrs    format, width = W, image_shape, source, name, split, mask_kind, acceleration, center_fraction,
             per_slice_mask, seed_rule, achieved_acceleration (mean), achieved_acceleration_per_slice (S,),
             acs_lines, calib_width (S,), kernel_width (S,), coils, coils_original, readout_rows_original,
             recon_size, padding, acquisition, scale_rule, settings (JSON of the preparation options),
             package_version

Validation/test references (fully-sampled data) live in a separate folder ``<split>_reference`` that
``PreparedSlices`` never opens.

The per-slice math (``prepare_slice``: readout crop, coil compression from ACS, ESPIRiT, scale) lives here so
that reconstruction of a new acquisition can normalise it exactly as the training data were.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from ..coils import espirit, sense_combine
from ..errors import AmbientMRIError, DataFileError
from ..masks import calibration_width
from ..operators import ifft2c

FORMAT = "ambient_mri.prepared/1"
REFERENCE_FORMAT = "ambient_mri.reference/1"
SCALE_PERCENTILE = 99.0
MAX_CALIB_WIDTH = 32
SCALE_RULE = (
    "scale = 99th percentile over all H x W pixels of |sum_c conj(S_c) x_c / sum_c |S_c|^2|, where x_c = "
    "ifft2c of coil c's calibration block (the calib_width fully acquired centre columns of the acquired, "
    "readout-cropped, coil-compressed k-space; zero elsewhere) and S the ESPIRiT maps from that same block; "
    "per slice, from acquired data only; training uses kspace / scale"
)
HOW_TO_PREPARE = (
    "create them with `ambient-mri prepare fastmri --input RAW --output OUT --split train` "
    "(then use OUT/train), or `ambient-mri prepare demo --output DIR`"
)


# --------------------------------------------------------------------------------------------------
# Per-slice math shared by the preparation pipeline and reconstruction of new data
# --------------------------------------------------------------------------------------------------


def _readout_image(kspace: np.ndarray) -> torch.Tensor:
    """Centred orthonormal 1-D inverse FFT along the readout (rows) of k-space (..., H0, L): the hybrid
    (x, k_y) space in which each acquired column is independent."""
    t = torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64))
    return torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(t, dim=-2), dim=-2, norm="ortho"), dim=-2)


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
    k = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(x, dim=-2), dim=-2, norm="ortho"), dim=-2)
    return k.numpy()


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


# --------------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------------


def _attr(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_prepared_header(path: str | os.PathLike) -> dict:
    """Attributes and shapes of a prepared file (no k-space read); DataFileError if it is not one."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as hf:
            fmt = _attr(hf.attrs.get("format", None))
            if fmt != FORMAT:
                what = "no 'format' attribute" if fmt is None else f"format {fmt!r}"
                raise DataFileError(path, f"not a prepared file ({what}, expected {FORMAT!r}); {HOW_TO_PREPARE}")
            missing = [k for k in ("kspace", "lines", "mask", "maps", "scale") if k not in hf]
            if missing:
                raise DataFileError(path, f"prepared file lacks dataset(s) {missing}")
            attrs = {k: _attr(v) for k, v in hf.attrs.items()}
            shapes = {k: tuple(hf[k].shape) for k in ("kspace", "lines", "mask", "maps", "scale")}
    except OSError as err:
        raise DataFileError(path, f"cannot open as HDF5 (not an HDF5 file, or corrupt): {err}") from err
    S, C, H, L = shapes["kspace"]
    W = int(attrs.get("width", shapes["mask"][-1]))
    expect = {"lines": (S, L), "mask": (S, W), "maps": (S, C, H, W), "scale": (S,)}
    for key, shape in expect.items():
        if shapes[key] != shape:
            raise DataFileError(path, f"dataset {key!r} has shape {shapes[key]}, expected {shape} "
                                f"(kspace {shapes['kspace']}, width {W})")
    return {"attrs": attrs, "slices": S, "coils": C, "image_shape": (H, W), "stored_lines": L}


def _summary(values: list):
    """One value if all agree, else the sorted distinct values."""
    distinct = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    if len(distinct) == 1:
        return distinct[0]
    try:
        return sorted(distinct)
    except TypeError:
        return distinct


class PreparedSlices(Dataset):
    """All slices of all prepared files (``ambient_mri.prepared/1``) in a folder, as training measurements.

    The index is built from attributes and dataset shapes only. Files are opened per item in whichever process
    reads it (DataLoader workers included), every read is copied out of h5py (fastMRI issue 215), and no handle is
    kept, so memory stays flat. Items: ``y`` (C, H, W) complex64 = acquired columns / scale scattered into zeros,
    ``mask`` (1, 1, W) float32, ``maps`` (C, H, W) complex64, ``sigma_n`` 0-d float32 (0), ``index`` int.

    A file that turns out unreadable or corrupt while training raises DataFileError naming the file and slice:
    a clear stop, because silently skipping slices would change the training distribution.
    """

    def __init__(self, root: str | os.PathLike, limit: int | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataFileError(self.root, f"no such folder of prepared files; {HOW_TO_PREPARE}")
        paths = sorted(p for p in self.root.glob("*.h5") if p.is_file() and not p.name.startswith("."))
        if not paths:
            hint = ""
            subs = [d.name for d in sorted(self.root.iterdir()) if d.is_dir() and any(d.glob("*.h5"))]
            if subs:
                hint = f" (its subfolders {subs} hold .h5 files: point at one of those, e.g. {self.root / subs[0]})"
            raise DataFileError(self.root, f"no prepared files (*.h5) in this folder{hint}; {HOW_TO_PREPARE}")
        if limit is not None and limit < 1:
            raise AmbientMRIError(f"limit must be >= 1, got {limit}")
        self.paths: list[str] = []
        headers = []
        file_idx, slice_idx = [], []
        for path in paths:
            h = read_prepared_header(path)
            if headers and (h["image_shape"], h["coils"]) != (headers[0]["image_shape"], headers[0]["coils"]):
                raise DataFileError(
                    path, f"image shape {h['image_shape']} with {h['coils']} coils differs from "
                    f"{headers[0]['image_shape']} with {headers[0]['coils']} coils in {self.paths[0]}; all files "
                    "of a training folder must share them (prepare with the same --image-size and --coils)")
            self.paths.append(str(path))
            headers.append(h)
            n = h["slices"]
            file_idx.append(np.full(n, len(self.paths) - 1, np.int32))
            slice_idx.append(np.arange(n, dtype=np.int32))
            if limit is not None and sum(len(f) for f in file_idx) >= limit:
                break
        self._file = np.concatenate(file_idx)[:limit]
        self._slice = np.concatenate(slice_idx)[:limit]
        self._headers = headers
        self.image_shape = tuple(headers[0]["image_shape"])
        self.coils = int(headers[0]["coils"])

    def __len__(self) -> int:
        return int(self._file.shape[0])

    def locate(self, i: int) -> tuple[str, int]:
        """(file path, slice number) of item ``i``."""
        return self.paths[int(self._file[i])], int(self._slice[i])

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} slices")
        i = int(i) % len(self)
        path, s = self.locate(i)
        try:
            with h5py.File(path, "r") as hf:
                k = np.array(hf["kspace"][s], dtype=np.complex64)   # copies: no h5py buffer survives
                lines = np.array(hf["lines"][s], dtype=np.int64)
                mask = np.array(hf["mask"][s], dtype=np.float32)
                maps = np.array(hf["maps"][s], dtype=np.complex64)
                scale = float(hf["scale"][s])
        except (OSError, KeyError, ValueError, TypeError) as err:
            raise DataFileError(path, f"slice {s}: cannot be read (file corrupt or changed since the dataset was "
                                f"indexed): {err}") from err
        W = mask.shape[-1]
        n = int((lines >= 0).sum())
        problem = None
        if not (np.isfinite(k).all() and np.isfinite(maps).all()):
            problem = "kspace or maps contain NaN or Inf"
        elif not (np.isfinite(scale) and scale > 0):
            problem = f"scale is {scale} (expected > 0)"
        elif lines[:n].min(initial=0) < 0 or lines[:n].max(initial=0) >= W or (lines[n:] >= 0).any():
            problem = f"lines out of range for width {W}"
        elif not np.array_equal(np.flatnonzero(mask), np.sort(lines[:n])):
            problem = "mask does not match the stored lines"
        if problem:
            raise DataFileError(path, f"slice {s}: {problem}")
        y = zero_filled(k, lines, W) / np.float32(scale)
        return {
            "y": torch.from_numpy(y.astype(np.complex64, copy=False)),
            "mask": torch.from_numpy(mask).reshape(1, 1, W),
            "maps": torch.from_numpy(maps),
            "sigma_n": torch.tensor(0.0, dtype=torch.float32),
            "index": i,
        }

    def info(self) -> dict:
        """What a model file records about its training data (plain Python values)."""
        used = np.unique(self._file)
        heads = [self._headers[j] for j in used]
        attrs = [h["attrs"] for h in heads]
        counts = np.bincount(self._file, minlength=len(self._headers))[used]
        ach = [float(np.mean(a.get("achieved_acceleration_per_slice", a.get("achieved_acceleration", np.nan))))
               for a in attrs]

        def pick(key):
            return _summary([a.get(key) for a in attrs])

        return {
            "kind": "prepared",
            "format": FORMAT,
            "root": str(self.root),
            "files": len(used),
            "slices": len(self),
            "image_shape": list(self.image_shape),
            "coils": self.coils,
            "coils_original": pick("coils_original"),
            "split": pick("split"),
            "mask": {
                "kind": pick("mask_kind"),
                "acceleration": pick("acceleration"),
                "center_fraction": pick("center_fraction"),
                "per_slice": pick("per_slice_mask"),
                "seed_rule": pick("seed_rule"),
                "acs_lines": pick("acs_lines"),
            },
            "achieved_acceleration": float(np.average(ach, weights=counts)),
            "recon_size": pick("recon_size"),
            "scale_rule": SCALE_RULE,
        }
