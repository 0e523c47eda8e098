"""The classical baselines of ``reconstruct``: zero-filled (A^H y), CG-SENSE and L1-wavelet (sigpy), with the rules
that choose their regularisation weight λ from the scan's own acquired data (never from a reference).

Inputs are normalised scans as ``scan.prepare_scan`` makes them: k-space y (S, C, H, W) complex64 zero off the
mask, maps (S, C, H, W), per-slice column masks (S, W).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import warn_below_zero_filled
from .masks import acquired_columns, outer_columns
from .operators import MultiCoilMRI, fft_rows
from .solvers import conjugate_gradient

METHODS = ("zero_filled", "sense", "l1_wavelet")
# λ grids in half decades; λ is chosen by cross-validation on the scan's own acquired lines (``choose_lambda``)
L1_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
L1_DEFAULT = 1e-3      # when no non-ACS line can be held out to choose λ
L1_VALIDATION_ITERS = 50
# When the held-out lines ask for this much wavelet shrinkage, the acquired lines (through the maps) do not pin the
# image down and L1-wavelet may land below zero-filled. Read off plain L1 (no ℓ2 floor; benchmarks/lambda_rules.py):
# every case below zero-filled with ρ >= 1.3 chose λ >= 3e-3, every case above it λ <= 3e-4. With the floor
# (``tikhonov_floor``) λ is mostly 1e-4 and this rarely fires; noisy scans warn by ``scan.outer_line_snr``.
L1_WARN_LAMBDA = 3e-3
SENSE_GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SENSE_DEFAULT = 1e-3
SENSE_ITERS = 100
SENSE_TOL = 1e-5       # CG stops early at this relative residual
FOLDS = 4              # every acquired non-ACS line is held out once
CV_TOLERANCE = 0.05    # the least-regularised λ within 5% of the best validation error (chosen on the calibration set)
VALIDATION_SLICES = {"sense": 2, "l1_wavelet": 2}
VALIDATION_ROWS = 128  # CG-SENSE's λ search solves this many image rows, spread over the maps' support (64 rows: one of
                       # the lambda_rules volumes lost 1.4 dB; 128 keeps every choice there)


def _folds(mask: np.ndarray, folds: int, seed, every: bool = False) -> list[np.ndarray]:
    """The acquired non-ACS columns of a column mask (W,) (``every``: all acquired columns, ACS included), shuffled
    (seeded) and dealt into up to ``folds`` groups; [] when every acquired column is an ACS column."""
    outer = outer_columns(mask)
    if outer.size == 0:
        return []
    cand = np.flatnonzero(acquired_columns(mask)) if every else outer
    cand = np.random.RandomState(seed).permutation(cand)
    return [np.sort(f) for f in np.array_split(cand, min(folds, cand.size))]


def central_slices(S: int, n: int) -> np.ndarray:
    """Up to ``n`` slice indices around the middle of the volume (edge slices often hold little signal)."""
    lo = max(0, S // 2 - n // 2)
    return np.arange(lo, min(S, lo + n))


def row_subset(y: np.ndarray, maps: np.ndarray, rows: int = VALIDATION_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """The CG-SENSE problem of N slices (y, maps: (N, C, H, W)) restricted to ``rows`` image rows spread evenly over
    the rows the maps cover -> (y', maps') of an image with that many rows. With a column mask every image row is
    its own 1-D problem (the inverse FFT along the readout separates them), so the subset's solution equals those
    rows of the full solution and its held-out k-space error samples the full one; the cost falls by H / rows."""
    H = y.shape[-2]
    covered = np.flatnonzero((np.abs(maps) ** 2).sum((0, 1, 3)) > 0)
    if H <= rows or covered.size <= rows:
        return y, maps
    idx = covered[np.linspace(0, covered.size - 1, rows).round().astype(int)]
    hybrid = np.ascontiguousarray(fft_rows(y, inverse=True)[..., idx, :])
    return fft_rows(hybrid), np.ascontiguousarray(maps[..., idx, :])


def _cg_sense(y: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, lam: float, iters: int) -> torch.Tensor:
    """(A^H A + λ I) x = A^H y by conjugate gradient from zero, stopped after ``iters`` steps or at a relative
    residual of ``SENSE_TOL``; y (S, C, H, W) normalised, mask (S, W)."""
    A = MultiCoilMRI(maps, mask[:, None, None, :])
    return conjugate_gradient(A.normal, A.adjoint(y), iters=iters, lam=float(lam), tol=SENSE_TOL)


def _l1(y: np.ndarray, maps: np.ndarray, mask: np.ndarray, lam: float, iters: int, l2: float = 0.0) -> np.ndarray:
    """min ½‖A x − y‖² + λ‖Ψ x‖₁ + ½ l2 ‖x‖² for one slice y (C, H, W) with column mask (W,), Ψ Daubechies-4
    wavelets: sigpy's L1WaveletRecon (the same operators, prox and FISTA) with LinearLeastSquares' ℓ2 term."""
    import sigpy as sp
    import sigpy.mri

    weights = mask[None, None, :] * np.ones_like(y.real)
    A = sigpy.mri.linop.Sense(maps, weights=weights)
    W = sp.linop.Wavelet(maps.shape[1:], wave_name="db4")
    proxg = sp.prox.UnitaryTransform(sp.prox.L1Reg(W.oshape, lam), W)
    state = np.random.get_state()  # sigpy's step-size power iteration starts from numpy's global generator:
    np.random.seed(0)              # seeded here so a reconstruction repeats exactly, the caller's stream kept
    try:
        return sp.app.LinearLeastSquares(A, y * mask * weights ** 0.5, proxg=proxg, lamda=l2, max_iter=iters,
                                         show_pbar=False).run()
    finally:
        np.random.set_state(state)


def _solve_batch(method: str, y: np.ndarray, maps: np.ndarray, masks: np.ndarray, lam, iters: int,
                 l2: float = 0.0) -> np.ndarray:
    """Reconstructions (N, H, W) of N slices y (N, C, H, W) with column masks (N, W); λ None: zero-filled; ``l2``:
    L1-wavelet's ℓ2 weight."""
    yt, mp, mt = torch.from_numpy(y), torch.from_numpy(maps), torch.from_numpy(masks.astype(np.float32))
    if lam is None:
        return MultiCoilMRI(mp, mt[:, None, None, :]).adjoint(yt * mt[:, None, None, :]).numpy()
    if method == "sense":
        return _cg_sense(yt * mt[:, None, None, :], mp, mt, lam, iters).numpy()
    return np.stack([_l1(y[i], maps[i], masks[i], lam, iters, l2) for i in range(len(y))])


def validation_errors(method: str, y: np.ndarray, maps: np.ndarray, m: np.ndarray, seed: int, iters: int,
                      l2: float = 0.0, every: bool = False) -> np.ndarray | None:
    """(len(grid),) cross-validation errors of ``method``'s λ grid on the scan's own lines, never a reference: on up
    to 2 central slices the acquired non-ACS lines (``every``: all acquired lines) are dealt into ``FOLDS`` groups;
    each group in turn is held out, the slice is solved from the rest with every λ, and each λ is scored by how
    well its solutions predict the held-out k-space over all groups and slices. None when no non-ACS line was
    acquired."""
    grid = SENSE_GRID if method == "sense" else L1_GRID
    iters = iters if method == "sense" else L1_VALIDATION_ITERS
    rows = []  # (slice, kept mask, held mask)
    for s in central_slices(y.shape[0], VALIDATION_SLICES[method]):
        for held in _folds(m[s], FOLDS, (seed, int(s)), every):
            rows.append((int(s), *_keep_and_held(m[s], held)))
    if not rows:
        return None
    idx = np.array([r[0] for r in rows])
    keep, held = np.stack([r[1] for r in rows]), np.stack([r[2] for r in rows])
    yy, mp = y[idx], maps[idx]
    if method == "sense":
        yy, mp = row_subset(yy, mp)

    def error(lam: float) -> float:
        return float(np.sqrt(_prediction_errors(yy, mp, _solve_batch(method, yy, mp, keep, lam, iters, l2),
                                                held).sum()))

    return np.array([error(lam) for lam in grid])


def _keep_and_held(mask: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A column mask (W,) and the columns held out of it -> (what is kept, what is held out) as float32 masks."""
    keep = np.array(mask, np.float32)
    keep[held] = 0
    out = np.zeros_like(keep)
    out[held] = 1
    return keep, out


def _prediction_errors(y: np.ndarray, maps: np.ndarray, x: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Per slice, the squared error with which images x (N, H, W) seen through ``maps`` predict y (N, C, H, W) on the
    held-out columns (N, W) -> (N,)."""
    from .operators import fft2c

    pred = fft2c(torch.from_numpy(maps * x[:, None])).numpy()
    return (np.abs((pred - y) * held[:, None, None, :]) ** 2).sum((1, 2, 3))


REFINE_FOLDS = 2   # held-out groups (of FOLDS) that judge refined maps or a learned prior: each costs a solve


def heldout_errors(solvers: dict, y: np.ndarray, maps: np.ndarray, m: np.ndarray, slices: np.ndarray,
                   seed=0, folds: int = REFINE_FOLDS) -> dict:
    """For ``slices`` of a scan, how well each solver predicts acquired non-ACS lines it did not see: the first
    ``folds`` of ``_folds``' groups (seeded by (``seed``, the slice's index in the scan)) are held out in turn and
    ``solvers[name](y_kept (N, C, H, W), maps (N, C, H, W), kept column masks (N, W))`` -> (images (N, H, W), the
    maps that see them) predicts them. -> {name: (N,) squared errors summed over the folds, "zero": (N,) the
    held-out energy, what a zero-filled image predicts}; 0 where no line can be held out. y normalised, maps
    alike, m (S, W)."""
    if "zero" in solvers:
        raise ValueError('heldout_errors: "zero" names the held-out energy, not a solver')
    idx = np.asarray(slices, dtype=int)
    yy, mp, mm = y[idx], maps[idx], m[idx]
    err = {name: np.zeros(idx.size) for name in (*solvers, "zero")}
    for f in range(folds):
        keep, held = mm.astype(np.float32), np.zeros(mm.shape, np.float32)
        for j, s in enumerate(idx):
            groups = _folds(mm[j], FOLDS, (seed, int(s)))
            if f < len(groups):
                keep[j], held[j] = _keep_and_held(mm[j], groups[f])
        if not held.any():
            break
        yk = yy * keep[:, None, None, :]
        err["zero"] += (np.abs(yy * held[:, None, None, :]) ** 2).sum((1, 2, 3))
        for name, solve in solvers.items():
            x, maps_x = solve(yk, mp, keep)
            err[name] += _prediction_errors(yy, maps_x, x, held)
    return err


def heldout_map_errors(y: np.ndarray, maps: np.ndarray, m: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """For ``slices`` of a scan, how well CG-SENSE (λ ``coils.REFINE_LAMBDA``) with ``maps`` and with maps refined
    without them (``coils.refine_maps``) predicts acquired non-ACS lines held out (``heldout_errors``, seed 0)
    -> (2, len(slices)) squared errors summed over the folds: row 0 ``maps``, row 1 refined; 0 where no line can
    be held out. y (S, C, H, W) normalised, maps alike, m (S, W). A better fit of the lines the maps were refined
    on is no proof: on nibabel's 12-coil EPI at R = 6 refined maps fitted the acquired lines better (misfit 4.3 ->
    2.9) and lost 15 dB on 3 of 4 slices, whose refined maps predicted held-out lines 8-19x worse; where refining
    gained 3-10 dB they predicted them 6-50x better (docs/reconstruction.md)."""
    from .coils import REFINE_LAMBDA, refine_maps

    def sense(yk, mp, keep):
        return _cg_sense(torch.from_numpy(yk), torch.from_numpy(mp), torch.from_numpy(keep), REFINE_LAMBDA,
                         SENSE_ITERS).numpy(), mp

    def refined(yk, mp, keep):
        return sense(yk, refine_maps(torch.from_numpy(yk), torch.from_numpy(mp), torch.from_numpy(keep)).numpy(),
                     keep)

    err = heldout_errors({"maps": sense, "refined": refined}, y, maps, m, slices)
    return np.stack([err["maps"], err["refined"]])


def tolerance_pick(errs, tol: float = CV_TOLERANCE) -> int:
    """Index of the smallest λ whose validation error is within ``tol`` of the best: the outer lines' error is flat
    towards large λ (which shrink the image), so the least-regularised near-best λ wins."""
    e = np.asarray(errs)
    return int(np.flatnonzero(e <= (1 + tol) * e.min())[0])


def choose_lambda(method: str, y: np.ndarray, maps: np.ndarray, m: np.ndarray, seed: int, iters: int,
                  l2: float = 0.0) -> tuple[float | None, dict]:
    """λ for ``method`` (sense | l1_wavelet, the latter with ℓ2 weight ``l2``) from the scan's held-out lines
    (``validation_errors``). l1_wavelet: ``tolerance_pick`` on the non-ACS lines. sense: the geometric mean of the
    best λ on the non-ACS lines and the best on all acquired lines. Held-out outer lines carry little of the
    image's energy, so their error hardly sees the shrinkage of a large λ (it chose too large a λ on low-SNR
    scans); held-out ACS lines are easy to predict from their neighbours, so all lines favour too small a λ. The
    mean was fixed from the lambda_rules curves and adopted after scoring it, unchanged, on three new sources
    (benchmarks/lambda_rules.py: 7/9 within 0.5 dB of the grid's best there, against 6/9), not always on the grid.
    -> (λ, info); λ None when no line can be held out."""
    grid = SENSE_GRID if method == "sense" else L1_GRID
    outer = validation_errors(method, y, maps, m, seed, iters, l2)
    if outer is None:
        return None, {}
    info = {"lambda_grid": list(grid), "validation_error": outer.tolist()}
    if method != "sense":
        return grid[tolerance_pick(outer)], info
    every = validation_errors(method, y, maps, m, seed, iters, every=True)
    info["validation_error_all_lines"] = every.tolist()
    i, j = int(np.argmin(outer)), int(np.argmin(every))
    return (float(grid[i]) if i == j else float(np.sqrt(grid[i] * grid[j]))), info


def map_fit(y: np.ndarray, maps: np.ndarray, m: np.ndarray, noise: np.ndarray, fitted: int = 0,
            slices: np.ndarray | None = None) -> np.ndarray:
    """Per slice, what ``map_misfit`` is made of: (3, N) rows residual energy of the least-squares SENSE fit, the
    noise energy a right model leaves (0 where there is no verdict: σ 0, or no row with more samples than unknowns),
    acquired energy; for ``slices`` (default the up to 2 central ones). Each slice is solved alone (its own rows,
    its own CG stop), so its numbers do not depend on which slices are checked with it. Arguments as
    ``map_misfit``."""
    from .operators import fft2c

    idx = central_slices(y.shape[0], VALIDATION_SLICES["sense"]) if slices is None else np.asarray(slices)
    out = np.zeros((3, len(idx)))
    for j, s in enumerate(idx):
        mm, sig = m[s:s + 1].astype(np.float32), float(noise[s])
        yy, mp = row_subset(y[s:s + 1], maps[s:s + 1])
        x = _solve_batch("sense", yy, mp, mm, SENSE_GRID[0], SENSE_ITERS)
        pred = fft2c(torch.from_numpy(mp * x[:, None])).numpy()
        covered = ((np.abs(mp[0]) ** 2).sum(0) > 0).sum(-1)                 # (rows,) unknowns per row
        dof = (yy.shape[1] * int((mm != 0).sum()) - covered).clip(min=0).sum() - fitted * yy.shape[-2] / y.shape[-2]
        out[:, j] = (float((np.abs((pred - yy) * mm[:, None, None, :]) ** 2).sum()),
                     sig ** 2 * dof if dof > 0 and sig > 0 else 0.0, float((np.abs(yy) ** 2).sum()))
    return out


def misfit_of(fit: np.ndarray) -> tuple[float, float] | None:
    """``map_fit``'s (3, N) pooled over its slices that have a verdict -> ``map_misfit``'s pair, or None."""
    ok = fit[1] > 0
    if not ok.any():
        return None
    residual, expected, energy = fit[:, ok].sum(1)
    return float(residual / expected), float((residual - expected) / energy)


def slice_misfits(fit: np.ndarray) -> list[tuple[float, float] | None]:
    """``map_fit``'s (3, N) -> ``misfit_of`` of each slice alone."""
    return [misfit_of(fit[:, [j]]) for j in range(fit.shape[1])]


def map_misfit(y: np.ndarray, maps: np.ndarray, m: np.ndarray, noise: np.ndarray,
               fitted: int = 0) -> tuple[float, float] | None:
    """How far the maps fall short of explaining the acquired data, from the least-squares SENSE fit (λ = the grid's
    smallest, CG stopped as CG-SENSE's) on up to 2 central slices -> (its residual energy over the noise energy a
    right model leaves, σ² x (samples − covered pixels, per image row); the residual beyond that noise as a share
    of the acquired energy). The first is about 1 with the true maps on a well-conditioned scan and higher as ρ
    nears 1, where CG stops before the least-squares fit (true maps: 1.5 at ρ 1.6, 7.6 at ρ 1.1); rows with more
    unknowns than samples add their residual but no noise term (ρ-warned scans). It alone flags any map error once
    the noise is small enough, the share alone any low-SNR scan. y (S, C, H, W) normalised, maps alike, m (S, W),
    noise (S,) σ per sample in y's scale; ``fitted``: parameters per slice already fitted to these data (refined
    maps: C x degree²), which the noise term loses in proportion to the rows used. None when σ is 0 or no row has
    more samples than unknowns."""
    return misfit_of(map_fit(y, maps, m, noise, fitted))


def tikhonov_floor(y: np.ndarray, maps: np.ndarray, m: np.ndarray, seed: int) -> float:
    """The ℓ2 weight under L1-wavelet and under `fast`'s CG steps: the Tikhonov λ the scan's held-out non-ACS lines
    choose (``tolerance_pick``; SENSE_DEFAULT when none can be held out). This was CG-SENSE's own rule when the floor
    was chosen, and stays the floor's: the floor was calibrated with it. Without a floor both fell far below
    zero-filled where few ACS lines or heavy noise leave the system poorly conditioned (L1 by up to 8 dB, where
    CG-SENSE with the same maps was 2 dB above). For L1 it was chosen on calibration cases (MNI152 and ellipse
    phantoms, 21 cases) against 0.3 and 0.1 times this λ: the highest mean (+0.40 dB over none) and no case below
    zero-filled (2 without it); scored on other sources in benchmarks/noise_warning.py and lambda_rules.py."""
    errs = validation_errors("sense", y, maps, m, seed, SENSE_ITERS)
    return SENSE_DEFAULT if errs is None else float(SENSE_GRID[tolerance_pick(errs)])


def classical(method: str, y: np.ndarray, maps: np.ndarray, m: np.ndarray, seed: int, opts: dict) -> tuple:
    """(S, H, W) images of a normalised scan and what was chosen ({"lambda", "iters", the λ rule's table; "l2" for
    l1_wavelet}). opts: ``lam`` (skips the λ rule), ``iters``, ``l2`` (l1_wavelet; skips ``tikhonov_floor``)."""
    if method == "zero_filled":
        return _solve_batch(method, y, maps, m, None, 0), {}
    iters = int(opts.get("iters", SENSE_ITERS if method == "sense" else 100))
    lam, info, l2 = opts.get("lam"), {}, 0.0
    if method == "l1_wavelet":
        l2 = opts.get("l2")
        l2 = tikhonov_floor(y, maps, m, seed) if l2 is None else float(l2)
    if lam is None:
        lam, info = choose_lambda(method, y, maps, m, seed, iters, l2)
        if lam is None:
            lam = SENSE_DEFAULT if method == "sense" else L1_DEFAULT
            warn_below_zero_filled(
                f"{method}: every acquired line is an ACS line, so none can be held out to choose λ: the default "
                f"λ = {lam:g} is used unchecked and the image may be worse than zero-filled; pass lam= or compare "
                "with method='zero_filled'", "unchecked_lambda")
        elif method == "l1_wavelet" and lam >= L1_WARN_LAMBDA:
            warn_below_zero_filled(
                f"l1_wavelet: the scan's held-out lines chose a strong regularisation (λ = {lam:g} >= "
                f"{L1_WARN_LAMBDA:g}): the acquired lines do not determine this image well (few ACS lines for the "
                "coil maps, or few lines outside them), so it may be worse than zero-filled; compare with "
                "method='sense' or 'zero_filled'", "strong_lambda")
    lam = float(lam)
    x = _solve_batch(method, y, maps, m, lam, iters, l2)
    return x.astype(np.complex64), {"lambda": lam, "iters": iters, **({"l2": l2} if method == "l1_wavelet" else {}),
                                    **info}
