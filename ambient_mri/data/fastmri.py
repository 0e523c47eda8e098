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
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import DataFileError

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
KSPACE_KEY = "kspace"
MASK_KEY = "mask"
HEADER_KEY = "ismrmrd_header"
# fastMRI's SliceDataset uses "reconstruction_esc" for single-coil and "reconstruction_rss" for multi-coil.
TARGET_KEYS = {
    True: ("reconstruction_rss", "reconstruction_esc"),
    False: ("reconstruction_esc", "reconstruction_rss"),
}


# --------------------------------------------------------------------------------------------------
# Lazy array
# --------------------------------------------------------------------------------------------------


class LazyH5Array:
    """Array-like view of one HDF5 dataset: indexing reads only the selection, as a numpy copy.

    ``check_finite`` makes every read raise ``DataFileError`` (naming the slices) on NaN/Inf.
    """

    def __init__(
        self,
        volume: FastMRIVolume,
        key: str,
        shape: tuple[int, ...],
        dtype: np.dtype,
        check_finite: bool = False,
    ):
        self._volume = volume
        self.key = key
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.check_finite = check_finite

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyH5Array({self._volume.path.name}:{self.key}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, index) -> np.ndarray:
        with self._volume._h5() as hf:
            out = self._read(hf[self.key], index)
        out = np.array(out, dtype=self.dtype, copy=True)  # detach from h5py buffers (issue 215)
        if self.check_finite:
            self._raise_if_not_finite(out, index)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[()]
        return out if dtype is None else out.astype(dtype, copy=False)

    def read(self) -> np.ndarray:
        """The whole dataset as a numpy array (reads everything)."""
        return self[()]

    def _read(self, ds: h5py.Dataset, index):
        try:
            return self._select(ds, index)
        except OSError as err:
            raise DataFileError(
                self._volume.path, f"could not read {self.key}[{_fmt(index)}]: {err}"
            ) from err

    def _select(self, ds: h5py.Dataset, index):
        first, rest = _split_index(index)
        if not (isinstance(first, (list, np.ndarray)) and np.asarray(first).dtype.kind in "iu"):
            return ds[index]
        # h5py only accepts increasing, unique index lists: read those, then reorder as numpy would.
        ids = np.asarray(first)
        flat = np.where(ids < 0, ids + self.shape[0], ids).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError(f"index out of range for {self.key} with {self.shape[0]} slices")
        uniq, inverse = np.unique(flat, return_inverse=True)
        if not uniq.size:
            return np.empty((0, *self.shape[1:]), ds.dtype)[(slice(None), *rest)]
        block = ds[(uniq.tolist(), *rest)]
        return block[inverse.reshape(ids.shape)]

    def _raise_if_not_finite(self, out: np.ndarray, index) -> None:
        finite = np.isfinite(out)
        if finite.all():
            return
        path = self._volume.path
        bad = _bad_slices(finite, index, self.shape[0])
        if bad is None:
            raise DataFileError(path, f"{self.key} contains non-finite values (NaN or Inf)")
        which = f"slice {bad[0]}" if len(bad) == 1 else f"slices {bad}"
        raise DataFileError(path, f"{self.key} {which} contains non-finite values (NaN or Inf)")


def _split_index(index) -> tuple[Any, tuple]:
    if isinstance(index, tuple):
        return (index[0], index[1:]) if index else (Ellipsis, ())
    return index, ()


def _bad_slices(finite: np.ndarray, index, num_slices: int) -> list[int] | None:
    """Slice numbers (in the file) whose read data hold NaN/Inf; None if the index is too exotic to map."""
    first, _ = _split_index(index)
    try:
        ids = np.arange(num_slices)[first if first is not Ellipsis else slice(None)]
    except (IndexError, TypeError):
        return None
    if np.ndim(ids) == 0:
        return [int(ids)]
    if finite.ndim == 0 or finite.shape[0] != len(ids):
        return None
    ok = finite.reshape(len(ids), -1).all(axis=1)
    return [int(i) for i in np.asarray(ids)[~ok]]


def _fmt(index) -> str:
    return "..." if index is Ellipsis or (isinstance(index, tuple) and not index) else str(index)


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
            shape = _kspace_shape(self.path, hf)
            self.multicoil = len(shape) == 4
            self.target_key = _pick_target_key(self.path, hf, self.multicoil, target_key)
            target_shape = _target_shape(self.path, hf, self.target_key, shape)
            self.mask = _read_mask(self.path, hf, shape[-1])
            self.header = _read_header(self.path, hf, shape, target_shape)
            self.attrs = {k: _plain(v) for k, v in hf.attrs.items()}
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


def _read_header(path: Path, hf: h5py.File, kshape: tuple[int, ...], target_shape: tuple | None) -> dict:
    if HEADER_KEY not in hf:
        return _header_from_shapes(kshape, target_shape)
    try:
        raw = hf[HEADER_KEY][()]
    except (OSError, TypeError) as err:
        raise DataFileError(path, f"ismrmrd_header cannot be read: {err}") from err
    return _parse_header(path, raw)


def _header_from_shapes(kshape: tuple[int, ...], target_shape: tuple | None) -> dict:
    """Without a header: no padding, encoded size = k-space size, recon size = target size (else k-space)."""
    H, W = kshape[-2:]
    h, w = target_shape[-2:] if target_shape is not None else (H, W)
    return {
        "encoding_size": (int(H), int(W), 1),
        "recon_size": (int(h), int(w), 1),
        "enc_limits_min": 0,
        "enc_limits_center": int(W) // 2,
        "enc_limits_max": int(W),
        "padding_left": 0,
        "padding_right": int(W),
        "from_xml": False,
    }


def _parse_header(path: Path, raw) -> dict:
    if isinstance(raw, np.ndarray):
        raw = raw.item() if raw.size == 1 else raw.tobytes()
    if isinstance(raw, str):
        raw = raw.encode("utf-8")
    try:
        root = ET.fromstring(bytes(raw))
    except (ET.ParseError, TypeError, ValueError) as err:
        raise DataFileError(path, f"ismrmrd_header is not valid XML: {err}") from err
    query = _header_query(path, root)
    enc = ["encoding", "encodedSpace", "matrixSize"]
    rec = ["encoding", "reconSpace", "matrixSize"]
    lims = ["encoding", "encodingLimits", "kspace_encoding_step_1"]
    enc_size = tuple(query(enc + [a]) for a in "xyz")
    recon_size = tuple(query(rec + [a]) for a in "xyz")
    center, maximum = query(lims + ["center"]), query(lims + ["maximum"])
    minimum = query(lims + ["minimum"], default=0)
    if center < 0 or maximum < 0:
        raise DataFileError(
            path, f"ismrmrd_header has invalid encoding limits (center {center}, maximum {maximum})"
        )
    # Same arithmetic as fastmri.data.mri_data.SliceDataset._retrieve_metadata.
    padding_left = enc_size[1] // 2 - center
    return {
        "encoding_size": enc_size,
        "recon_size": recon_size,
        "enc_limits_min": minimum,
        "enc_limits_center": center,
        "enc_limits_max": maximum + 1,
        "padding_left": padding_left,
        "padding_right": padding_left + maximum + 1,
        "from_xml": True,
    }


def _header_query(path: Path, root: ET.Element):
    """fastmri.et_query semantics (descendant search, ISMRMRD namespace), returning ints."""
    namespaced = root.tag.startswith("{")
    ns = {"i": ISMRMRD_NAMESPACE}

    def query(names: list[str], default: int | None = None) -> int:
        expr = "." + "".join(f"//i:{n}" if namespaced else f"//{n}" for n in names)
        el = root.find(expr, ns)
        if el is None or el.text is None:
            if default is not None:
                return default
            raise DataFileError(path, f"ismrmrd_header lacks {'/'.join(names)}")
        try:
            return int(el.text.strip())
        except ValueError as err:
            raise DataFileError(
                path, f"ismrmrd_header {'/'.join(names)} is not an integer: {el.text.strip()!r}"
            ) from err

    return query


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
