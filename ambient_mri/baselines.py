"""The classical baselines of ``reconstruct``: zero-filled (A^H y), CG-SENSE and L1-wavelet (sigpy), with the rules
that choose their regularisation weight λ from the scan's own acquired data (never from a reference).

Inputs are normalised scans as ``scan.prepare_scan`` makes them: k-space y (S, C, H, W) complex64 zero off the
mask, maps (S, C, H, W), per-slice column masks (S, W).
"""

from __future__ import annotations

import numpy as np
import torch

from .masks import acs_columns
from .operators import MultiCoilMRI
from .solvers import conjugate_gradient

METHODS = ("zero_filled", "sense", "l1_wavelet")
L1_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
L1_DEFAULT = 1e-3      # when no non-ACS line can be held out to choose λ
SENSE_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
SENSE_DEFAULT = 1e-3
SENSE_ITERS = 100
SENSE_TOL = 1e-5       # CG stops early at this relative residual


def _holdout(mask: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray] | None:
    """Hold out 10% (at least one) of the acquired non-ACS columns of a column mask (W,): -> (mask without them,
    their indices), or None when every acquired column is an ACS column."""
    cand = np.flatnonzero((np.asarray(mask) != 0) & ~acs_columns(mask))
    if cand.size == 0:
        return None
    held = np.random.RandomState(seed).choice(cand, size=max(1, cand.size // 10), replace=False)
    train = np.array(mask, np.float32, copy=True)
    train[held] = 0
    return train, np.sort(held)


def _central_slices(S: int, n: int) -> np.ndarray:
    """Up to ``n`` slice indices around the middle of the volume (edge slices often hold little signal)."""
    lo = max(0, S // 2 - n // 2)
    return np.arange(lo, min(S, lo + n))


def _l1_weight(y: np.ndarray, maps: np.ndarray, mask: np.ndarray, seed: int) -> float | None:
    """λ for L1-wavelet from the scan's own acquired data: hold out 10% of the non-ACS lines, reconstruct from the
    rest with each λ of ``L1_GRID`` and keep the λ that best predicts the held-out lines (never the reference).
    None when there is no non-ACS line to hold out."""
    import sigpy.mri

    split = _holdout(mask, seed)
    if split is None:
        return None
    train, held = split
    errs = []
    for lam in L1_GRID:
        x = sigpy.mri.app.L1WaveletRecon(y * train, maps, lam, weights=train[None, None, :] * np.ones_like(y.real),
                                         max_iter=50, show_pbar=False).run()
        pred = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(maps * x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
        errs.append(float(np.linalg.norm(pred[..., held] - y[..., held])))
    return L1_GRID[int(np.argmin(errs))]


def _cg_sense(y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    """(A^H A + λ I) x = A^H y by conjugate gradient from zero, stopped after ``iters`` steps or at a relative
    residual of ``SENSE_TOL``; y (S, C, H, W) normalised, mask (S, W)."""
    A = MultiCoilMRI(maps, mask[:, None, None, :])
    return conjugate_gradient(A.normal, A.adjoint(y), iters=iters, lam=float(lam), tol=SENSE_TOL)


def _sense_weight(y: np.ndarray, maps: np.ndarray, m: np.ndarray, seed: int, iters: int) -> float | None:
    """λ for CG-SENSE chosen like L1-wavelet's, from the scan's own data: on up to 4 central slices, hold out 10%
    of the acquired non-ACS lines, solve from the rest with each λ of ``SENSE_GRID`` and keep the λ whose
    solution best predicts the held-out k-space. Noise-free data pick a small λ (CG-SENSE converges to the exact
    solution), noisy data a larger one (unregularised CG on a random mask amplifies noise). None when no slice
    has a non-ACS line to hold out."""
    from .operators import fft2c

    idx = _central_slices(y.shape[0], 4)
    splits = [_holdout(m[s], (seed, int(s))) for s in idx]
    keep = [i for i, sp in enumerate(splits) if sp is not None]
    if not keep:
        return None
    idx = idx[keep]
    train = torch.from_numpy(np.stack([splits[i][0] for i in keep]))
    held = torch.zeros_like(train)
    for j, i in enumerate(keep):
        held[j, splits[i][1]] = 1
    yt, mp = torch.from_numpy(y[idx]), torch.from_numpy(maps[idx])
    held = held[:, None, None, :]
    errs = []
    for lam in SENSE_GRID:
        x = _cg_sense(yt * train[:, None, None, :], mp, train, lam, iters)
        pred = fft2c(mp * x[:, None])
        errs.append(float(torch.linalg.vector_norm((pred - yt) * held)))
    return SENSE_GRID[int(np.argmin(errs))]


def classical(method: str, y: np.ndarray, maps: np.ndarray, m: np.ndarray, seed: int, opts: dict) -> tuple:
    if method == "l1_wavelet":
        import sigpy.mri

        lam = opts.get("lam")
        if lam is None:
            mid = y.shape[0] // 2
            lam = _l1_weight(y[mid], maps[mid], m[mid], seed)
        lam = L1_DEFAULT if lam is None else float(lam)
        out = [sigpy.mri.app.L1WaveletRecon(y[s], maps[s], lam, weights=m[s][None, None, :] * np.ones_like(y[s].real),
                                            max_iter=opts.get("iters", 100), show_pbar=False).run()
               for s in range(y.shape[0])]
        return np.stack(out).astype(np.complex64), {"lambda": lam}
    yt = torch.from_numpy(y)
    if method == "zero_filled":
        A = MultiCoilMRI(torch.from_numpy(maps), torch.from_numpy(m)[:, None, None, :])
        return A.adjoint(yt).numpy(), {}
    iters = int(opts.get("iters", SENSE_ITERS))
    lam = opts.get("lam")
    if lam is None:
        lam = _sense_weight(y, maps, m, seed, iters)
    lam = SENSE_DEFAULT if lam is None else float(lam)
    x = _cg_sense(yt, torch.from_numpy(maps), torch.from_numpy(m), lam, iters)
    return x.numpy(), {"lambda": lam, "iters": iters}


