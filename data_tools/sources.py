"""Real magnitude images available offline, for simulating MRI data (no fastMRI download here).

``mni152_slices`` uses the MNI152 2009a T1 template that ships inside nilearn (197 x 233 x 189, 1 mm).
"""

from __future__ import annotations

import numpy as np

from ambient_mri.errors import AmbientMRIError

# Volume axes of the template are (x: left->right, y: posterior->anterior, z: inferior->superior).
_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
_BRAIN_THRESHOLD = 0.05  # voxel counts as brain above this fraction of the volume max
_MIN_AREA = 0.25  # a slice is "brain-containing" if its brain area is >= this fraction of the largest


def mni152_volume() -> np.ndarray:
    """The MNI152 T1 template, (197, 233, 189) float32 (nilearn keeps it cached in memory)."""
    try:
        from nilearn.datasets import load_mni152_template
    except ImportError as err:
        raise ImportError("mni152_slices needs nilearn: pip install ambient_mri[demo]") from err
    return np.asarray(load_mni152_template(resolution=1).dataobj, dtype=np.float32)


def mni152_slices(
    num_slices: int,
    size: tuple[int, int] = (320, 320),
    axis: str = "axial",
    start: int | None = None,
    stop: int | None = None,
) -> np.ndarray:
    """``num_slices`` evenly spaced MNI152 slices as (S, h, w) float32 with max 1 over the stack.

    Slices come from [start, stop) along ``axis`` ("axial", "coronal", "sagittal"); by default from the
    range where the slice holds a sizeable brain cross-section. Each slice is oriented with superior
    (or anterior, for axial slices) up, zero-padded to the aspect ratio of ``size`` (so anatomy is not
    stretched), and resized with anti-aliasing.
    """
    if axis not in _AXES:
        raise AmbientMRIError(f"axis must be one of {sorted(_AXES)}, got {axis!r}")
    vol = mni152_volume()
    ax = _AXES[axis]
    lo, hi = _slice_range(vol, ax, start, stop)
    if not 1 <= num_slices <= hi - lo:
        raise AmbientMRIError(f"num_slices must be in [1, {hi - lo}] for slices {lo}..{hi - 1} along {axis}")
    # Centres of num_slices equal bins: evenly spread and, since bins are >= 1 slice wide, distinct.
    idx = lo + np.floor((np.arange(num_slices) + 0.5) * (hi - lo) / num_slices).astype(int)
    planes = np.moveaxis(vol, ax, 0)[idx]  # (S, a, b), a/b the remaining axes in order
    # Rows = the later axis reversed (superior or anterior at the top), columns = the earlier axis.
    planes = np.flip(np.swapaxes(planes, 1, 2), axis=1)
    stack = _resize(_pad_to_aspect(planes, size), size)
    stack = np.clip(stack, 0.0, None)
    return (stack / stack.max()).astype(np.float32)


def mni152_brain_range(axis: str = "axial") -> tuple[int, int]:
    """[start, stop) of the slices along ``axis`` that hold a sizeable brain cross-section (mni152_slices' default)."""
    if axis not in _AXES:
        raise AmbientMRIError(f"axis must be one of {sorted(_AXES)}, got {axis!r}")
    return _slice_range(mni152_volume(), _AXES[axis], None, None)


def _slice_range(vol: np.ndarray, ax: int, start: int | None, stop: int | None) -> tuple[int, int]:
    n = vol.shape[ax]
    if start is not None or stop is not None:
        lo, hi = start or 0, n if stop is None else stop
        if not 0 <= lo < hi <= n:
            raise AmbientMRIError(f"need 0 <= start < stop <= {n}, got start={start}, stop={stop}")
        return lo, hi
    others = tuple(i for i in range(3) if i != ax)
    area = (vol > _BRAIN_THRESHOLD * vol.max()).sum(axis=others)
    keep = np.flatnonzero(area >= _MIN_AREA * area.max())
    return int(keep[0]), int(keep[-1]) + 1


def _pad_to_aspect(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Zero-pad (S, a, b) symmetrically so a / b equals size[0] / size[1]."""
    S, a, b = planes.shape
    target = size[0] / size[1]
    new_a, new_b = (a, int(round(a / target))) if a / b > target else (int(round(b * target)), b)
    new_a, new_b = max(new_a, a), max(new_b, b)
    pa, pb = new_a - a, new_b - b
    return np.pad(planes, ((0, 0), (pa // 2, pa - pa // 2), (pb // 2, pb - pb // 2)))


def _resize(planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    # One call for the whole stack: the slice axis keeps its length, so it is not blurred.
    return resize(
        planes,
        (planes.shape[0], *size),
        order=1,
        anti_aliasing=True,
        anti_aliasing_sigma=(0, *_sigma(planes.shape[1:], size)),
        preserve_range=True,
    )


def _sigma(shape: tuple[int, int], size: tuple[int, int]) -> tuple[float, float]:
    # skimage's default sigma, per in-plane axis: (scale - 1) / 2 when shrinking, 0 when enlarging.
    return tuple(max(0.0, (s / t - 1) / 2) for s, t in zip(shape, size))
