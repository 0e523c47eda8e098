"""``LazyH5Array``: one dataset of a fastMRI file as an array whose indexing reads only the selection, as a numpy
copy (no h5py buffer survives a read: fastMRI issue 215), with NaN/Inf named by slice."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ..errors import H5_DAMAGE, DataFileError

if TYPE_CHECKING:
    from .fastmri import FastMRIVolume


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
            try:
                ds = hf[self.key]
            except (RuntimeError, KeyError) as err:  # damaged metadata
                raise DataFileError(self._volume.path, f"could not read {self.key} (damaged file): {err}") from err
            out = self._read(ds, index)
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
        except H5_DAMAGE as err:
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


