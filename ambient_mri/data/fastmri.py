"""Lazy reader for official fastMRI HDF5 files (one file = one volume).

Layout (facebookresearch/fastMRI): ``kspace`` complex64 (S, C, H, W) multi-coil or (S, H, W) single-coil;
``reconstruction_rss`` / ``reconstruction_esc`` float32 (S, h, w) targets; ``mask`` (W,) in test files;
``ismrmrd_header`` XML; attributes ``max``, ``norm``, ``acquisition``, ``patient_id`` (test files also
``acceleration``, ``num_low_frequency``).

Nothing large is read when a file is opened: k-space and targets are read slice by slice on demand.
The HDF5 file is opened per read (or held open by ``with volume:`` in the current process only), and every
read is copied into a fresh numpy array, so volumes are safe to use in DataLoader workers
(fastMRI issue 215: never keep h5py-backed buffers alive).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ..errors import DataFileError
from .fastmri_header import read_header
from .lazy_h5 import LazyH5Array

KSPACE_KEY = "kspace"
MASK_KEY = "mask"
# fastMRI's SliceDataset uses "reconstruction_esc" for single-coil and "reconstruction_rss" for multi-coil.
TARGET_KEYS = {
    True: ("reconstruction_rss", "reconstruction_esc"),
    False: ("reconstruction_esc", "reconstruction_rss"),
}


# --------------------------------------------------------------------------------------------------
# Volume
# --------------------------------------------------------------------------------------------------


class FastMRIVolume:
    """One official fastMRI file, opened lazily.

    Attributes:
        path: the file.
        kspace: lazy (S, C, H, W) or (S, H, W) complex64 array; reads raise on NaN/Inf.
        target: lazy (S, h, w) float32 array, or None (test files).
        target_key: "reconstruction_rss" / "reconstruction_esc" / None.
        mask: (W,) float32 column mask (test files) or None.
        header: encoding_size, recon_size (x, y, z), enc_limits_min/center, enc_limits_max (XML maximum + 1,
            as fastMRI), padding_left, padding_right (as fastmri.data.mri_data), from_xml.
        attrs: file attributes (max, norm, acquisition, patient_id, ...), plain Python values.
    """

    def __init__(self, path: str | os.PathLike, target_key: str | None = None):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        _check_path(self.path)
        with self._h5() as hf:
            try:
                shape = _kspace_shape(self.path, hf)
                self.multicoil = len(shape) == 4
                self.target_key = _pick_target_key(self.path, hf, self.multicoil, target_key)
                target_shape = _target_shape(self.path, hf, self.target_key, shape)
                self.mask = _read_mask(self.path, hf, shape[-1])
                self.header = read_header(self.path, hf, shape, target_shape)
                self.attrs = {k: _plain(v) for k, v in hf.attrs.items()}
            except (RuntimeError, KeyError) as err:  # h5py on damaged metadata
                raise DataFileError(self.path, f"damaged HDF5 file ({err})") from err
        self.kspace = LazyH5Array(self, KSPACE_KEY, shape, np.complex64, check_finite=True)
        self.target = (
            None if target_shape is None else LazyH5Array(self, self.target_key, target_shape, np.float32)
        )

    # -- shapes --------------------------------------------------------------------------------------
    @property
    def num_slices(self) -> int:
        return self.kspace.shape[0]

    @property
    def num_coils(self) -> int | None:
        return self.kspace.shape[1] if self.multicoil else None

    @property
    def name(self) -> str:
        return self.path.name

    def padding_mask(self) -> np.ndarray:
        """(W,) float32: 1 on the k-space columns inside the header's padding (fastMRI's padding_left/right), 0 on
        the zero-padded columns outside it, which were never acquired (all ones without an XML header)."""
        keep = np.ones(self.kspace.shape[-1], np.float32)
        left, right = int(self.header["padding_left"]), int(self.header["padding_right"])
        if self.header.get("from_xml") and 0 <= left < right <= keep.size:
            keep[:left] = 0
            keep[right:] = 0
        return keep

    def acquired(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` (..., W) without the header's zero-padded columns (never acquired, as fastMRI's apply_mask);
        DataFileError when every column it marks lies there: the header and the mask disagree."""
        keep = self.padding_mask()
        if np.any(mask) and not np.any(mask * keep):
            raise DataFileError(self.path, f"every acquired column ({int(np.count_nonzero(mask))}) lies in the "
                                f"k-space padding its header declares (padding_left {self.header['padding_left']}, "
                                f"padding_right {self.header['padding_right']}): the header and the mask disagree")
        return mask * keep

    def __len__(self) -> int:
        return self.num_slices

    def __repr__(self) -> str:
        return (
            f"FastMRIVolume({self.name!r}, kspace={self.kspace.shape}, target_key={self.target_key!r}, "
            f"mask={'yes' if self.mask is not None else 'no'})"
        )

    # -- reading -------------------------------------------------------------------------------------
    def slice(self, i: int) -> np.ndarray:
        """k-space of slice ``i``: (C, H, W) or (H, W) complex64; DataFileError on NaN/Inf."""
        i = _slice_number(i, self.num_slices)
        return self.kspace[i]

    def target_slice(self, i: int) -> np.ndarray | None:
        """Target of slice ``i``: (h, w) float32, or None for files without a target."""
        if self.target is None:
            return None
        return self.target[_slice_number(i, self.num_slices)]

    # -- file handle: per read, or held open in this process inside ``with`` ---------------------------
    def open(self) -> FastMRIVolume:
        """Keep the file open in this process until ``close()`` (reads otherwise open it each time)."""
        if self._file is None or self._pid != os.getpid():
            self._file = _open_h5(self.path)
            self._pid = os.getpid()
        return self

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self._file.close()
        self._file, self._pid = None, None

    def __enter__(self) -> FastMRIVolume:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # A handle must never cross a process boundary (DataLoader workers re-open the file themselves).
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    @contextlib.contextmanager
    def _h5(self) -> Iterator[h5py.File]:
        if self._file is not None and self._pid == os.getpid() and self._file.id.valid:
            yield self._file
            return
        hf = _open_h5(self.path)
        try:
            yield hf
        finally:
            hf.close()


def read_fastmri(path: str | os.PathLike, target_key: str | None = None) -> FastMRIVolume:
    """Open an official fastMRI HDF5 file lazily; bad files raise ``DataFileError`` naming the problem.

    ``target_key`` picks the target dataset; default: reconstruction_rss (multi-coil) or
    reconstruction_esc (single-coil), falling back to the other one if only it is present.
    """
    return FastMRIVolume(path, target_key=target_key)


# --------------------------------------------------------------------------------------------------
# Validation helpers: each turns a bad file into DataFileError(path, problem)
# --------------------------------------------------------------------------------------------------


def _check_path(path: Path) -> None:
    if not path.exists():
        raise DataFileError(path, "file not found")
    if path.is_dir():
        raise DataFileError(path, "is a directory, expected a fastMRI .h5 file")


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError as err:
        raise DataFileError(path, "file not found") from err
    except OSError as err:
        problem = (
            "truncated or corrupt" if "truncated" in str(err).lower() else "not an HDF5 file, or corrupt"
        )
        raise DataFileError(path, f"cannot open as HDF5 ({problem}): {err}") from err


def _kspace_shape(path: Path, hf: h5py.File) -> tuple[int, ...]:
    fmt = hf.attrs.get("format")
    fmt = fmt.decode(errors="replace") if isinstance(fmt, bytes) else fmt
    if isinstance(fmt, str) and fmt.startswith("ambient_mri."):
        raise DataFileError(path, f"is an ambient_mri file ({fmt}), not an official fastMRI file: give the original "
                            "fastMRI files (the ones `prepare` read) instead")
    if KSPACE_KEY not in hf:
        raise DataFileError(path, f"missing dataset 'kspace' (found: {sorted(hf.keys())})")
    ds = hf[KSPACE_KEY]
    if not isinstance(ds, h5py.Dataset):
        raise DataFileError(path, "'kspace' is a group, expected a dataset")
    shape, dtype = tuple(ds.shape), ds.dtype
    if dtype.kind in "fiu":
        if len(shape) >= 1 and shape[-1] == 2:
            raise DataFileError(
                path,
                f"kspace is complex data stored as real {dtype} with a trailing "
                f"dimension of 2 (shape {shape}); the official layout is complex64",
            )
        raise DataFileError(path, f"kspace is real ({dtype}), expected complex64 k-space")
    if dtype.kind != "c":
        raise DataFileError(path, f"kspace has dtype {dtype}, expected complex64")
    if len(shape) not in (3, 4):
        raise DataFileError(
            path,
            f"kspace has rank {len(shape)} (shape {shape}); expected (slices, coils, H, W) or (slices, H, W)",
        )
    if min(shape) == 0:
        raise DataFileError(path, f"kspace is empty (shape {shape})")
    return shape


def _pick_target_key(path: Path, hf: h5py.File, multicoil: bool, requested: str | None) -> str | None:
    if requested is not None:
        if requested not in hf:
            raise DataFileError(path, f"missing target dataset {requested!r}")
        return requested
    return next((k for k in TARGET_KEYS[multicoil] if k in hf), None)


def _target_shape(path: Path, hf: h5py.File, key: str | None, kshape: tuple[int, ...]) -> tuple | None:
    if key is None:
        return None
    ds = hf[key]
    if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
        raise DataFileError(
            path, f"target {key!r} has shape {getattr(ds, 'shape', None)}, expected (slices, h, w)"
        )
    if ds.dtype.kind not in "fiu":
        raise DataFileError(path, f"target {key!r} has dtype {ds.dtype}, expected real float32")
    if ds.shape[0] != kshape[0]:
        raise DataFileError(
            path, f"target {key!r} has {ds.shape[0]} slices but kspace has {kshape[0]} (slice count mismatch)"
        )
    return tuple(ds.shape)


def _read_mask(path: Path, hf: h5py.File, width: int) -> np.ndarray | None:
    if MASK_KEY not in hf:
        return None
    raw = np.asarray(hf[MASK_KEY])
    if raw.dtype.kind not in "biuf":
        raise DataFileError(path, f"mask has dtype {raw.dtype}, expected bool or numbers")
    # Leading singleton dimensions, e.g. (1, W), are harmless; anything else is not a column mask.
    mask = raw.astype(np.float32).reshape(-1) if raw.ndim >= 1 and raw.size == raw.shape[-1] else raw
    if mask.ndim != 1:
        raise DataFileError(path, f"mask has shape {raw.shape}, expected (W,) = ({width},)")
    if mask.shape[0] != width:
        raise DataFileError(path, f"mask width {mask.shape[0]} does not match kspace width {width}")
    if not np.isfinite(mask).all() or not np.isin(mask, (0.0, 1.0)).all():
        raise DataFileError(path, "mask values must be 0 or 1")
    if not mask.any():
        raise DataFileError(path, "mask is all zero (no acquired columns)")
    return mask


def _slice_number(i, num_slices: int) -> int:
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"slice number must be an int, got {type(i).__name__}")
    j = int(i) + num_slices if i < 0 else int(i)
    if not 0 <= j < num_slices:
        raise IndexError(f"slice {i} out of range for a volume with {num_slices} slices")
    return j


def _plain(value):
    """HDF5 attribute -> plain Python value (str, int, float, list)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return value.tolist() if value.ndim else _plain(value.item())
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value
