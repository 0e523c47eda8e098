"""Arrays as users hand them in (numpy, torch, lists; big-endian from h5py; views with negative strides), turned
into numpy arrays or tensors the rest of the package can use, or refused with the argument's name."""

from __future__ import annotations

import numpy as np
import torch

from .errors import AmbientMRIError


def as_array(a, name: str) -> np.ndarray:
    """A numeric numpy array in native byte order (a view where possible). Tensors are detached and brought to
    the CPU (complex32 as complex64: numpy has none); meta tensors (no data) and object / string arrays are
    refused naming ``name``."""
    if isinstance(a, torch.Tensor):
        if a.is_meta:
            raise AmbientMRIError(f"{name}: a tensor on the 'meta' device holds no data")
        a = a.detach().cpu()
        if a.layout != torch.strided:  # sparse
            a = a.to_dense()
        if a.dtype == torch.complex32:  # numpy has none of these: the nearest it has
            a = a.to(torch.complex64)
        elif a.is_floating_point() and a.dtype not in (torch.float16, torch.float32, torch.float64):
            a = a.to(torch.float32)  # bfloat16, float8
        a = a.numpy()
    try:
        a = np.asarray(a)
    except (ValueError, TypeError) as e:  # ragged lists
        raise AmbientMRIError(f"{name}: cannot be read as a numeric array ({e})") from None
    if a.dtype.kind not in "biufc":
        raise AmbientMRIError(f"{name}: expected numbers, got an array of dtype {a.dtype}")
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def as_tensor(a, name: str, copy: bool = True) -> torch.Tensor:
    """A tensor: tensors pass through (meta refused), anything else via ``as_array``, contiguous and in native byte
    order; copied so that later writes into the caller's array cannot reach it (a cached copy of it, e.g. an
    operator's), unless ``copy=False`` (a caller that reads it once, such as an FFT: no second whole volume)."""
    if isinstance(a, torch.Tensor):
        if a.is_meta:
            raise AmbientMRIError(f"{name}: a tensor on the 'meta' device holds no data")
        return a
    a = as_array(a, name)
    return torch.from_numpy(np.array(a) if copy else np.ascontiguousarray(a))


def check_binary(m: np.ndarray, name: str) -> None:
    """Refuse a mask holding anything but 0 and 1 (a 0.5 or 2 would scale what it multiplies, NaN poisons it)."""
    bad = ~np.isin(m, (0, 1))
    if bad.any():
        raise AmbientMRIError(f"{name} must contain only 0 (not acquired) and 1 (acquired); it holds "
                              f"{np.asarray(m)[bad].flat[0].item()!r} ({int(bad.sum())} value(s) that are neither)")
