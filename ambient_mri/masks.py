"""Sampling masks: fastMRI k-space masks, variable-density masks, pixel masks, and the further corruption Ã ⊂ A.

Column masks (one value per phase-encode column, the last axis W) are returned with shape (1, W) so that they
broadcast over rows; 2-D masks have shape (H, W). All masks are float32, 1 = acquired / kept.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .arrays import as_array, check_binary
from .errors import AmbientMRIError
from .files import check_count

KSPACE_KINDS = ("random", "equispaced", "gaussian1d", "uniform1d", "poisson2d")
COLUMN_KINDS = tuple(k for k in KSPACE_KINDS if k != "poisson2d")  # what multi-coil files and prepare take
DEFAULT_CENTER_FRACTION = 0.08  # fastMRI's at R = 4


def _words(v: int) -> list[int]:
    """v in 32-bit words, lowest first (numpy seeds with words below 2**32)."""
    out = []
    while True:
        out.append(v & 0xFFFFFFFF)
        v >>= 32
        if not v:
            return out


def seed_from(seed) -> int | tuple[int, ...] | None:
    """fastMRI's convention: a file name seeds as ``tuple(map(ord, name))``; ints and tuples pass through. Values
    at or above 2**32 (numpy's limit; derived seeds such as seed * 100_003 + b reach it) become their 32-bit words,
    lowest first, so distinct derived seeds stay distinct (taking them modulo 2**32 let two user seeds share an Ã);
    smaller values are unchanged."""
    if seed is None:
        return None
    if isinstance(seed, str):
        if not seed:
            raise AmbientMRIError("seed: an empty file name seeds nothing; give a name, an integer or None")
        return tuple(map(ord, seed))
    parts = [seed] if isinstance(seed, numbers.Integral) else list(seed) if isinstance(seed, (tuple, list)) else None
    if not parts or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in parts):
        raise AmbientMRIError(f"seed must be an integer >= 0, a tuple of them or a file name, got {seed!r}")
    values = [int(v) for v in parts]
    if min(values, default=0) < 0:
        raise AmbientMRIError(f"seed must be >= 0, got {seed!r}")
    if isinstance(seed, numbers.Integral):
        return values[0] if values[0] < 2**32 else tuple(_words(values[0]))
    return tuple(w for v in values for w in _words(v))


def _rng(seed) -> np.random.RandomState:
    return np.random.RandomState(seed_from(seed))


def num_low_frequencies(width: int, center_fraction: float) -> int:
    """Number of ACS columns, as fastMRI computes it."""
    return round(width * center_fraction)


def center_block(width: int, num_low: int) -> slice:
    """Columns of the centre block, starting at (W - num_low + 1) // 2 as in fastMRI."""
    start = (width - num_low + 1) // 2
    return slice(start, start + num_low)


def _check(kind: str, shape: Sequence[int], acceleration: float, center_fraction: float) -> tuple[int, int]:
    if kind not in KSPACE_KINDS:
        raise AmbientMRIError(f"unknown mask kind {kind!r}; choose one of {', '.join(KSPACE_KINDS)}")
    shape = _shape(shape)
    if isinstance(acceleration, bool) or not (isinstance(acceleration, numbers.Real) and math.isfinite(acceleration)
                                              and acceleration >= 1):
        raise AmbientMRIError(f"acceleration must be a finite number >= 1, got {acceleration!r}")
    if isinstance(center_fraction, bool) or not (isinstance(center_fraction, numbers.Real)
                                                 and 0 < center_fraction < 1):
        raise AmbientMRIError(f"center_fraction must be in (0, 1), got {center_fraction!r}")
    H = shape[-2] if len(shape) >= 2 else 1
    return H, shape[-1]


def _shape(shape) -> tuple[int, ...]:
    """A mask shape from the user: a sequence of positive integers, the last one W."""
    if isinstance(shape, torch.Size):
        shape = tuple(shape)
    if not isinstance(shape, (tuple, list)) or not shape or any(
            isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1 for v in shape):
        raise AmbientMRIError(f"mask shape must be a tuple of positive integers such as (H, W) or (W,), got {shape!r}")
    return tuple(int(v) for v in shape)


def kspace_mask(kind: str, shape: Sequence[int], acceleration: float, center_fraction: float = DEFAULT_CENTER_FRACTION,
                seed=None) -> np.ndarray:
    """A k-space sampling mask. Returns float32 (1, W) for column masks, (H, W) for ``poisson2d``.

    kind:
        ``random``      fastMRI ``RandomMaskFunc`` (Bernoulli columns, line count varies),
        ``equispaced``  fastMRI ``EquispacedMaskFractionFunc`` (W/R columns in total, centre included),
        ``gaussian1d``  exactly round(W/R) columns: the centre block plus columns drawn without replacement
                        with a Gaussian density (std W/6) around the centre,
        ``uniform1d``   exactly round(W/R) columns: the centre block plus uniformly drawn columns (A-DPS anchor),
        ``poisson2d``   sigpy's variable-density Poisson disc over (H, W) with a square calibration region.
    seed: int, tuple, or a file name (fastMRI's ``tuple(map(ord, fname))``); same seed -> same mask.
    """
    m = _draw(kind, shape, acceleration, center_fraction, seed)
    if not m.any():  # e.g. 8 columns at R = 16: reconstruct would refuse it later, far from the cause
        raise AmbientMRIError(f"{kind} mask at acceleration {acceleration:g} with center_fraction {center_fraction} "
                              f"on {m.shape[-1]} columns acquires nothing; lower the acceleration or raise "
                              "center_fraction")
    return m


def _draw(kind: str, shape: Sequence[int], acceleration: float, center_fraction: float, seed) -> np.ndarray:
    H, W = _check(kind, shape, acceleration, center_fraction)
    num_low = num_low_frequencies(W, center_fraction)
    if num_low >= W:  # fastMRI divides by the columns left outside the ACS block
        raise AmbientMRIError(f"center_fraction {center_fraction} makes all {W} columns ACS lines: nothing is left "
                              "to undersample; lower center_fraction")
    alone = W / max(num_low, 1)
    too_many = f"the {num_low} ACS lines of center_fraction {center_fraction} already give acceleration " \
               f"{alone:.3g}, {'below' if alone < acceleration else 'no more than'} the {acceleration:g} asked for"
    if kind == "equispaced" and num_low * acceleration >= W:  # fastMRI's spacing formula divides by W - that
        raise AmbientMRIError(f"equispaced: {too_many}; lower center_fraction or acceleration")
    if kind == "random" and num_low * acceleration > W:  # kept as fastMRI draws it (parity), but never silently
        warnings.warn(f"random: {too_many}, so fastMRI's RandomMaskFunc keeps the ACS block alone (acceleration "
                      f"{W / num_low:.3g}); lower center_fraction or acceleration", stacklevel=3)
    if kind in ("random", "equispaced"):
        from fastmri.data.subsample import EquispacedMaskFractionFunc, RandomMaskFunc

        cls = RandomMaskFunc if kind == "random" else EquispacedMaskFractionFunc
        # fastMRI masks columns of a real view (..., W, 2): shape[-2] is the column count.
        m, _ = cls([center_fraction], [acceleration])((1, W, 1), seed=seed_from(seed))
        return m.numpy().reshape(1, W).astype(np.float32)
    if kind == "poisson2d":
        import sigpy.mri

        calib = (max(num_low_frequencies(H, center_fraction), 1), max(num_low, 1))
        s = seed_from(seed)
        int_seed = int(np.random.RandomState(s).randint(0, 2**31 - 1)) if s is not None else None
        try:
            m = sigpy.mri.poisson((H, W), acceleration, calib=calib, dtype=np.float32, seed=int_seed)
        except ValueError as e:  # sigpy refuses accelerations its density search cannot reach
            raise AmbientMRIError(f"poisson2d at acceleration {acceleration:g} on {H} x {W}: {e}") from None
        return np.asarray(m, dtype=np.float32)
    total = int(round(W / acceleration))
    if total < num_low:
        raise AmbientMRIError(f"acceleration {acceleration} keeps {total} columns, fewer than the {num_low} ACS lines")
    mask = np.zeros(W, dtype=np.float32)
    mask[center_block(W, num_low)] = 1
    outside = np.flatnonzero(mask == 0)
    if kind == "gaussian1d":
        p = np.exp(-0.5 * ((outside - W / 2) / (W / 6)) ** 2)
        p /= p.sum()
    else:
        p = None
    chosen = _rng(seed).choice(outside, size=total - num_low, replace=False, p=p)
    mask[chosen] = 1
    return mask.reshape(1, W)


def acquired_columns(mask) -> np.ndarray:
    """Boolean (W,) of columns with any acquired sample."""
    m = as_array(mask, "mask")
    check_binary(m, "mask")  # NaN != 0 would count as acquired
    m = m.reshape(-1, m.shape[-1])
    return (m != 0).any(axis=0)


def acs_columns(mask) -> np.ndarray:
    """(W,) bool: the contiguous block of acquired columns through the k-space centre column W // 2 (the ACS
    block); all False when the centre column was not acquired."""
    cols = acquired_columns(mask)
    out = np.zeros_like(cols)
    c = cols.shape[0] // 2
    if cols[c]:
        lo, hi = c, c
        while lo > 0 and cols[lo - 1]:
            lo -= 1
        while hi < cols.shape[0] - 1 and cols[hi + 1]:
            hi += 1
        out[lo: hi + 1] = True
    return out


def outer_columns(mask) -> np.ndarray:
    """Indices of the acquired columns outside the ACS block (those the λ rules can hold out)."""
    return np.flatnonzero(acquired_columns(mask) & ~acs_columns(mask))


def acs_width(mask) -> int:
    """Width of the ACS block (``acs_columns``); 0 if the centre column was not acquired."""
    return int(acs_columns(mask).sum())


def calibration_width(mask) -> int:
    """Largest n whose columns [W//2 - n//2, W//2 - n//2 + n) were all acquired: the calibration region that
    sigpy's centred crop takes, symmetric even when a random line sits next to the ACS block."""
    cols = acquired_columns(mask)
    W, n = cols.shape[0], 0
    while n < W and cols[W // 2 - (n + 1) // 2: W // 2 - (n + 1) // 2 + n + 1].all():
        n += 1
    return n


def achieved_acceleration(mask) -> float:
    """Achieved acceleration: W / acquired columns for column masks, H*W / acquired samples for 2-D masks."""
    m = as_array(mask, "mask")
    check_binary(m, "mask")  # NaN counted as acquired, 0.5 as a whole line
    if m.size == 0 or not m.any():
        raise AmbientMRIError(f"mask of shape {m.shape} acquires nothing: no acceleration")
    m = m.reshape(-1, m.shape[-1]) if m.ndim > 1 else m.reshape(1, -1)
    if m.shape[0] == 1 or np.all(m == m[:1]):
        n = np.count_nonzero(m[0])
        return m.shape[-1] / n if n else float("inf")
    n = np.count_nonzero(m)
    return m.size / n if n else float("inf")


def pixel_mask(shape: Sequence[int], p: float, seed=None) -> np.ndarray:
    """Float32 mask of ``shape`` with each pixel missing (0) independently with probability p in [0, 1)."""
    if isinstance(p, bool) or not (isinstance(p, numbers.Real) and 0 <= p < 1):
        raise AmbientMRIError(f"missing-pixel probability p must be a number in [0, 1), got {p!r}")
    return (_rng(seed).uniform(size=_shape(shape)) >= p).astype(np.float32)


def _is_column_mask(m: np.ndarray) -> bool:
    flat = m.reshape(-1, m.shape[-2], m.shape[-1]) if m.ndim >= 2 else m.reshape(1, 1, -1)
    return flat.shape[1] == 1 or bool(np.all(flat == flat[:, :1]))


def further_mask(mask, extra_lines: int | None = None, delta: float | None = None, acs_lines: int | None = None,
                 seed=None, kind: str | None = None):
    """The further corruption Ã ⊂ A: a sub-mask of ``mask`` that drops acquired samples, never adds one.

    Column masks (shape (..., 1, W), (W,), or (..., H, W) constant along H): ``extra_lines`` removes that many
    acquired non-ACS columns (A-DPS; fixed count), or ``delta`` drops each acquired non-ACS column with probability
    δ. The ACS block is never touched: ``acs_lines`` central columns if given, else a centred block as wide as the
    contiguous acquired block around the centre (it holds fastMRI's ACS block; a random line next to it may go).
    Pixel masks (anything else): ``delta`` drops each kept pixel with probability δ (Daras et al. 2023). A leading
    batch dimension is handled example by example from one seeded generator.
    kind: "lines" or "pixels" forces the mode (default: lines when the mask is constant along H). Per-slice column
    masks given as (S, W) look like one pixel mask: pass them as (S, 1, W) or with kind="lines".
    Returns the same type (numpy or torch) and shape as ``mask``.
    """
    if (extra_lines is None) == (delta is None):
        raise AmbientMRIError("further_mask needs exactly one of extra_lines or delta")
    if delta is not None and (isinstance(delta, bool) or not (isinstance(delta, numbers.Real) and 0 <= delta < 1)):
        raise AmbientMRIError(f"delta must be a number in [0, 1), got {delta!r}")
    if extra_lines is not None:
        check_count("extra_lines", extra_lines, low=0)
    is_torch = isinstance(mask, torch.Tensor)
    m = as_array(mask, "further_mask: mask")
    check_binary(m, "further_mask: mask")  # Ã selects acquired samples: a 0.5 or 2 would come out again
    m = m.real.astype(np.float32)
    if m.ndim == 0 or m.size == 0:
        raise AmbientMRIError(f"further_mask needs a mask of shape (W,), (..., 1, W) or (..., H, W), got {m.shape}")
    if acs_lines is not None:
        check_count("acs_lines", acs_lines, low=0, high=m.shape[-1])
    rng = _rng(seed)
    if kind not in (None, "lines", "pixels"):
        raise AmbientMRIError(f"further_mask kind must be 'lines' or 'pixels', got {kind!r}")
    if kind == "lines" or (kind is None and _is_column_mask(m)):
        out = _further_columns(m, extra_lines, delta, acs_lines, rng)
    else:
        if kind is None and m.ndim == 2 and 4 <= m.shape[0] < m.shape[1] and m.mean() <= 0.5:
            # fewer rows than columns (images are square or taller), every row acquiring one central block of >= 4
            # columns, at most half of all samples acquired: most likely per-slice column masks (a uniform pixel
            # mask keeping p <= 0.5 has such blocks in 4 rows with probability p^16 < 2e-5; a variable-density one
            # with sampled central columns can, hence only a warning); as pixels, Ã drops samples of the ACS blocks
            block = min(calibration_width(row) for row in m)
            if block >= 4:
                warnings.warn(f"further_mask: this {m.shape} mask looks like per-slice column masks (every row "
                              f"acquires a central block of {block} or more columns) and is taken as one pixel mask, "
                              "which drops ACS samples: pass it as (S, 1, W) or with kind='lines' (kind='pixels' "
                              "if it is a pixel mask)", stacklevel=2)
        if extra_lines is not None:
            raise AmbientMRIError("extra_lines needs a column mask; use delta for pixel masks")
        out = m * (rng.uniform(size=m.shape) >= delta)
    out = out.astype(np.float32)
    return torch.from_numpy(out).to(device=mask.device, dtype=mask.dtype) if is_torch else out


def _further_columns(m: np.ndarray, extra_lines, delta, acs_lines, rng) -> np.ndarray:
    W = m.shape[-1]
    rows = m.reshape(-1, m.shape[-2] if m.ndim >= 2 else 1, W)
    out = rows.copy()
    for b in range(rows.shape[0]):
        cols = rows[b].any(axis=0)
        protect = np.zeros(W, dtype=bool)
        if acs_lines is not None:
            protect[center_block(W, acs_lines)] = True
        else:
            n = acs_width(cols[None].astype(np.float32))
            protect[center_block(W, n)] = n > 0
        candidates = np.flatnonzero(cols & ~protect)
        if extra_lines is not None:
            if extra_lines > candidates.size:
                raise AmbientMRIError(
                    f"cannot remove {extra_lines} lines: only {candidates.size} lines lie outside the ACS block"
                )
            drop = rng.choice(candidates, size=int(extra_lines), replace=False)
        else:
            drop = candidates[rng.uniform(size=candidates.size) < delta]
        out[b][:, drop] = 0
    return out.reshape(m.shape)
