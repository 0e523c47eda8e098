"""A multi-coil scan as reconstruction takes it: input checks, the per-slice preparation that training data got
(readout crop, ESPIRiT maps and the intensity scale from the ACS lines only), the noise level, and whether a model
suits the scan."""

from __future__ import annotations

import numbers
import warnings

import numpy as np
import torch

from .arrays import as_array, check_binary
from .errors import AmbientMRIError, warn_below_zero_filled
from .metrics import center_crop
from .record import TrainingRecord


def check_inputs(kspace, mask) -> tuple[np.ndarray, np.ndarray]:
    """-> k-space (S, C, H, W) complex64 zeroed off the mask, and per-slice column masks (S, W)."""
    k = as_array(kspace, "kspace")
    if not np.iscomplexobj(k):
        raise AmbientMRIError(f"kspace must be complex, got {k.dtype}")
    if k.ndim == 3:
        k = k[None]
    if k.ndim != 4:
        raise AmbientMRIError(f"kspace must be (S, C, H, W) or (C, H, W), got shape {k.shape}")
    if not np.isfinite(k).all():
        raise AmbientMRIError("kspace contains NaN or Inf")
    S, C, H, W = k.shape
    if 0 in k.shape:
        raise AmbientMRIError(f"kspace of shape {k.shape} is empty: it needs at least one slice, coil, row and "
                              "column (S, C, H, W)")
    m = as_array(mask, "mask")
    if m.ndim == 0 or m.shape[-1] != W:
        raise AmbientMRIError(f"mask of shape {np.shape(mask)}: its width does not match the k-space width {W}")
    check_binary(m, "mask")  # before the cast: a complex 1+1j must not pass as 1
    m = m.real.astype(np.float32)
    if m.ndim == 4 and m.shape[1] == 1:  # the operators' (B, 1, H|1, W)
        m = m[:, 0]
    if m.ndim > 3:
        raise AmbientMRIError(f"mask of shape {np.shape(mask)} is not (W,), (H, W), one row per slice ({S}, W) "
                              f"or per-slice ({S}, 1|H, W)")
    if m.ndim == 2 and m.shape[0] == H == S > 1 and not (m == m[:1]).all():
        raise AmbientMRIError(f"mask of shape {m.shape} is ambiguous: the k-space has {S} slices and {H} rows, so it "
                              f"may be one (H, W) mask or one row per slice; give per-slice column masks as ({S}, 1, "
                              f"W), one mask for every slice as (1, H, W)")
    if (m.ndim == 2 and m.shape[0] == H and H != S) or (m.ndim == 3 and m.shape[0] in (1, S) and m.shape[1] == H > 1):
        # (H, W), (1, H, W) or per-slice (S, H, W) column masks
        if not (m == m[..., :1, :]).all():
            raise AmbientMRIError("the mask varies along the readout (rows): reconstruct takes Cartesian "
                                  "column (phase-encode) masks only")
        m = m[..., :1, :]
    m = np.broadcast_to(m.reshape(-1, W), (S, W)).copy() if m.reshape(-1, W).shape[0] in (1, S) else None
    if m is None:
        raise AmbientMRIError(f"mask of shape {np.shape(mask)} is not (W,), (H, W), one row per slice ({S}, W) "
                              f"or per-slice ({S}, H, W)")
    # a measured column holds noise in every coil: one that is exactly zero throughout (zero padding, a mask
    # wider than the acquisition) was not measured, and solving as if it were forces the image to zero there
    has_data = (k != 0).any(axis=(1, 2))                        # (S, W), one pass over the k-space
    dead = (m != 0) & ~has_data & has_data.any(1, keepdims=True)  # an all-zero slice is refused later, by name
    if dead.any():
        m[dead] = 0
        warnings.warn(f"the mask marks {int(dead.sum())} column(s) as acquired whose k-space is exactly zero in every "
                      f"coil and row ({int(dead.any(1).sum())} of {S} slice(s); e.g. zero padding): they are treated "
                      "as not acquired", stacklevel=3)
    if not (m != 0).any(axis=1).all():
        s = int(np.flatnonzero(~(m != 0).any(axis=1))[0])
        raise AmbientMRIError(f"slice {s}: the columns the mask marks as acquired hold no data (exactly zero in every "
                              "coil): does the mask belong to this k-space?" if dead[s].any() else
                              "mask is all zero for at least one slice: nothing was acquired")
    with np.errstate(over="ignore"):  # said below, in words
        out = (k * m[:, None, None, :]).astype(np.complex64)
    if k.dtype != np.complex64 and not np.isfinite(out).all():  # finite in complex128, beyond complex64's range
        raise AmbientMRIError(f"kspace values reach {np.abs(k).max():.3g}, beyond the complex64 range the "
                              "reconstruction computes in: scale the k-space down")
    return out, m


MAPS_RSS_TOLERANCE = 1.25  # given maps whose RSS (median over their support) is outside [1/1.25, 1.25] are warned


def prepare_scan(k: np.ndarray, m: np.ndarray, rows: int | None, maps=None, coils: int | None = None):
    """Per slice: readout crop, coil compression to ``coils`` virtual coils (SVD of the ACS columns, as
    ``prepare --coils``), ESPIRiT maps (unless given) and the intensity scale, all from the ACS lines only."""
    from .data.calibration import calibration_columns, calibration_scale, prepare_slice, row_crop

    S, C, _, W = k.shape
    if coils is not None and (isinstance(coils, bool) or not isinstance(coils, numbers.Integral) or
                              not 1 <= coils <= C):
        raise AmbientMRIError(f"coils must be an integer in [1, {C}] (the scan has {C} coils), got {coils!r}")
    if maps is not None and coils is not None and coils != C:
        raise AmbientMRIError("coils compresses the scan to virtual coils whose maps are estimated here: give maps "
                              "or coils, not both")
    if maps is not None:
        maps = as_array(maps, "maps")
        if maps.ndim not in (3, 4) or (maps.ndim == 4 and maps.shape[0] not in (1, S)):
            raise AmbientMRIError(f"maps must be (C, H, W) or (S={S}, C, H, W), got shape {maps.shape}")
        if not np.isfinite(maps).all():
            raise AmbientMRIError("maps contain NaN or Inf")
        if not (np.abs(maps).reshape(maps.shape[0] if maps.ndim == 4 else 1, -1).max(1) > 0).all():
            raise AmbientMRIError("maps are all zero (for a slice): no coil sees anything")
        rss = np.sqrt((np.abs(maps) ** 2).sum(-3))
        level = float(np.median(rss[rss > 0]))  # over the maps' support: ESPIRiT's are zero outside it
        if not 1 / MAPS_RSS_TOLERANCE < level < MAPS_RSS_TOLERANCE:
            # SENSE's image is the object over the maps' scale: PSNR against an RSS reference would judge the scale
            warnings.warn(f"maps: their root-sum-of-squares over the coils is {level:.3g} (median where they are "
                          "nonzero), not 1 as ESPIRiT's, BART's and sigpy's are: the image comes out in that scale "
                          "(1 / that times the usual); divide the maps by their root-sum-of-squares", stacklevel=3)
    ks, mps, scales = [], [], []
    for s in range(S):
        lines = np.flatnonzero(m[s])
        if maps is None:
            try:
                p = prepare_slice(k[s][..., lines], lines, W, rows=rows, coils=coils)
            except AmbientMRIError as e:
                raise AmbientMRIError(f"slice {s}: {e}") from None
            full = np.zeros((*p.kspace.shape[:-1], W), np.complex64)
            full[..., lines] = p.kspace
            ks.append(full), mps.append(p.maps), scales.append(p.scale)
        else:
            full = row_crop(k[s], rows or k.shape[-2])
            mp = maps[s if maps.shape[0] == S else 0] if maps.ndim == 4 else maps
            if mp.shape != full.shape:
                raise AmbientMRIError(f"maps of shape {mp.shape} do not match the k-space slice {full.shape}")
            scale = calibration_scale(full * m[s], mp, calibration_columns(m[s]))
            if not np.isfinite(scale) or scale <= 0:  # as prepare_slice refuses it: the image would be NaN
                raise AmbientMRIError(f"slice {s}: intensity scale from the ACS lines is {scale:g} (expected > 0): "
                                      "its ACS columns hold no signal where the maps are nonzero")
            ks.append(full * m[s]), mps.append(mp.astype(np.complex64))
            scales.append(scale)
    return np.stack(ks), np.stack(mps), np.asarray(scales, np.float32)


def scan_noise_std(k: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(S,) thermal noise per k-space sample of each slice (data.prepared.noise_std on its acquired columns), in
    the input's scale."""
    from .data.calibration import noise_std

    return np.array([noise_std(k[s][..., np.flatnonzero(m[s])]) for s in range(k.shape[0])])


def check_multicoil_model(model) -> TrainingRecord:
    """The model's training record, if the model suits multi-coil k-space; else an AmbientMRIError saying why."""
    record = getattr(model, "record", None)
    if not isinstance(record, TrainingRecord):
        raise AmbientMRIError(f"model must be a model file or a loaded ambient_mri model (load_model), got "
                              f"{type(model).__name__}")
    if record.operator != "multicoil":
        raise AmbientMRIError(f"model was trained for the {record.operator!r} operator, not multi-coil MRI")
    return record


def model_rows(model, H0: int, W: int) -> int:
    """Check that ``model`` suits multi-coil k-space (S, C, H0, W); -> its image rows (the readout crop)."""
    record = check_multicoil_model(model)
    if not record.image_shape:
        return H0
    h = record.image_shape[-2]
    if h > H0:
        raise AmbientMRIError(f"model was trained on images of {h} rows but the k-space has {H0} readout rows (rows "
                              "can only be cropped); resample the data or use a model trained at this size")
    if W not in record.widths:  # the network is convolutional: any width runs, but only trained ones are tested
        warnings.warn(f"the model was trained on k-space widths {list(record.widths)}, this scan has {W} columns: "
                      "the network runs at any width, but its prior was not fitted to this one", stacklevel=3)
    return h


def zero_filled_rss(k: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """fastMRI's zero-filled baseline: RSS of the inverse FFT of the undersampled k-space, centre-cropped."""
    from .coils import rss
    from .operators import ifft2c

    img = rss(ifft2c(torch.from_numpy(k * m.reshape(-1, 1, 1, k.shape[-1])))).numpy()
    return center_crop(img, size).astype(np.float32)




# Below this many acquired samples (coils x acquired columns) per unknown pixel of a row (the row's width inside the
# maps' support), the linear system of SENSE is nearly square and the reconstruction amplifies noise without bound.
# benchmarks/twix_maps.py: on a real 2-coil scan (ρ = 1.15 at R = 2, lower above) CG-SENSE falls below zero-filled
# even with maps from the fully-sampled scan; every simulated benchmark volume has ρ >= 1.47 and stays above.
MIN_SAMPLES_PER_UNKNOWN = 1.3


def samples_per_unknown(maps: np.ndarray, m: np.ndarray) -> float:
    """ρ = C · (acquired columns) / (median width of the maps' support over the rows that have one), the smallest
    over the slices; maps (S, C, H, W), column masks (S, W). ρ <= 1: the coils cannot unalias the acquisition."""
    support = (np.abs(maps) ** 2).sum(1) > 0                       # (S, H, W)
    out = []
    for s in range(maps.shape[0]):
        widths = support[s].sum(-1)
        widths = widths[widths > 0]
        if widths.size:
            out.append(maps.shape[1] * float(np.count_nonzero(m[s])) / float(np.median(widths)))
    return min(out) if out else float("inf")


# The λ rules hold acquired non-ACS lines out and score each λ by how well it predicts them. When those lines carry
# less signal than half their noise energy, every λ predicts them about equally badly, the rule picks by chance, and a
# linear method amplifies noise below zero-filled: on benchmarks/noise_warning.py's noisy phantoms (calibration) every
# case below zero-filled with lines to hold out had this ratio <= 1.19; every lambda_rules volume has >= 1.65.
MIN_OUTER_SNR = 1.5


def outer_line_snr(k: np.ndarray, m: np.ndarray, noise: np.ndarray) -> float | None:
    """Mean energy per sample of the acquired columns outside the ACS block over the noise energy σ², pooled over
    slices; k (S, C, H, W) the readout-cropped k-space, column masks (S, W), σ (S,) per sample in k's scale
    (``scan_noise_std``). 1 = pure noise. None when no column lies outside the ACS block or σ is 0."""
    from .masks import outer_columns

    energy, expected = 0.0, 0
    for s in range(k.shape[0]):
        cols = outer_columns(m[s])
        if cols.size and noise[s] > 0:
            # in units of σ: |v|² in float32 underflows to 0 below ~1e-19 and overflows above ~1e19 (k-space scale)
            r = np.abs(k[s][..., cols]).astype(np.float64) / float(noise[s])
            energy += float(np.sum(r * r))
            expected += r.size
    return energy / expected if expected > 0 else None


def warn_if_noise_dominated(snr: float | None, method: str) -> None:
    """The warning ``reconstruct`` gives a linear method when ``outer_line_snr`` < MIN_OUTER_SNR."""
    if snr is not None and snr < MIN_OUTER_SNR:
        warn_below_zero_filled(
            f"{method}: the acquired lines outside the ACS block are mostly noise (energy {snr:.2f}x the noise level, "
            f"below {MIN_OUTER_SNR}): held-out lines cannot tell a good λ from a bad one, whether chosen or given, "
            "and the image may be worse than zero-filled; compare with method='zero_filled', or use a learned method",
            "noise")


# The near-unregularised SENSE fit of the acquired lines leaves this many times the noise energy when the coil maps
# cannot explain the data (ESPIRiT from few ACS lines on anatomy that fills the phase-encode field of view; the
# true maps leave ~1). First 16, between the calibration volume's largest misfit with SENSE above zero-filled
# (10.2) and the smallest with it below (24.7, pydicom's MR_small) in benchmarks/lambda_rules.py; the held-out
# "wide" set of benchmarks/noise_warning.py then had CG-SENSE 0.64 dB below zero-filled, unwarned, at 14.9 (its
# refined maps give 32.2 dB there, zero-filled 24.0), so it is 12, near the geometric mean of 10.2 and 14.9. The
# wide set is no longer held out for it; map_refinement.py's "fresh" set, built after the move, is.
MAX_MAP_MISFIT = 12.0
# ... and the misfit beyond the noise must also be this share of the acquired energy: without noise any map error
# is many times the noise (noise-free simulations: 1e11 times, at shares of 5e-5 to 1.3e-4 with maps good enough for
# CG-SENSE 10+ dB above zero-filled). Twice the largest of those; added after the wide set was first run, whose
# failing cases have shares of 8e-4 to 1.1e-2.
MIN_MAP_UNEXPLAINED = 3e-4


# Refinement is tried once a volume's central slices (pooled or one alone) exceed this, on each slice whose own
# misfit exceeds it; a slice keeps the refined maps where they fit better and predict held-out lines better
# (baselines.heldout_map_errors, where the misfit is under MAX_MAP_MISFIT). The misfit is measured against the
# noise, so more noise hides the same map error: a 4-slice phantom filling the field of view (R 2, 4 coils, 8 ACS
# lines) had misfits 7-15 at σ 0.005-0.007 but 4.8-6.1 at 0.009 and under 6 above, where CG-SENSE stayed 1.1-2.5 dB
# below zero-filled, unwarned, with the bar at 6 (tests/test_coils.py). Maps that explain the data sit at 1-2, so the
# bar is 2, and the held-out check, not the misfit, decides under 12: on nibabel's EPI (misfits 3.6-5.4) it keeps
# ESPIRiT's maps where refining lost 15 dB.
REFINE_SLICE_MISFIT = 2.0
# Under this misfit the refined maps must predict the held-out lines clearly better, by REFINE_CLEAR_RATIO: slices of
# the phantom whose ESPIRiT maps are wrong had ratios 0.04-0.58 (refining gained 3.9-14.9 dB), slices of the demo's
# training brains with misfits 2-9 had 0.77-1.55, where refining moved CG-SENSE by -1.0 to +2.6 dB: there the ratio
# does not tell, and ESPIRiT's maps stay (benchmarks/heldout_ratio.py). Between this and MAX_MAP_MISFIT any better
# prediction keeps them, as before the bar moved.
REFINE_CLEAR_MISFIT = 6.0
REFINE_CLEAR_RATIO = 0.7


def maps_misfit(misfit: tuple[float, float] | None, limit: float = MAX_MAP_MISFIT) -> bool:
    """Whether ``baselines.map_misfit`` says the maps do not explain the data (misfit above ``limit`` and the
    unexplained share above MIN_MAP_UNEXPLAINED)."""
    return misfit is not None and misfit[0] > limit and misfit[1] > MIN_MAP_UNEXPLAINED


def warn_if_maps_misfit(misfit: tuple[float, float] | None, refined: bool | None = None, *,
                        method: str) -> None:
    """The warning ``reconstruct`` gives any method but zero_filled when ``maps_misfit`` holds for the maps it used;
    ``refined``: None (``refine_maps`` not tried), True (these are its maps), False (tried, not kept)."""
    if maps_misfit(misfit):
        note = {None: "", True: ", after refining the maps", False: "; refining the maps did not help"}[refined]
        warn_below_zero_filled(
            f"{method}: the coil maps do not explain the acquired data (the SENSE fit leaves {misfit[0]:.1f}x the "
            f"noise energy, {100 * misfit[1]:.2f}% of the data's{note}): "
            "maps from these ACS lines are poor for this anatomy (too few ACS lines, or anatomy filling the field of "
            "view), so the image may be worse than zero-filled; acquire more ACS lines, pass maps=, or compare with "
            "method='zero_filled'", "maps")


def warn_if_maps_unchecked(method: str, coils: int) -> None:
    """The warning ``reconstruct`` gives a learned method when the scan has a noise level but no image row with more
    samples than unknowns, so ``baselines.map_misfit`` has no verdict (the linear methods are warned by ρ there):
    with ESPIRiT's maps on anatomy filling the field of view `fast` fell below zero-filled unseen on such a scan
    (pydicom's MR_small, 4 coils, R = 4; benchmarks/map_refinement.py)."""
    warn_below_zero_filled(
        f"{method}: the coil maps cannot be checked against the data ({coils} coils x the acquired columns are no "
        "more than the unknown pixels of any image row), and ESPIRiT's maps from few ACS lines can be poor unseen "
        "(anatomy filling the field of view), so the image may be worse than zero-filled; pass maps=, acquire more "
        "lines, or compare with method='zero_filled'", "maps_unchecked")


# The maps' support (where Σ_c |S_c|² > 0) may leave out few bright pixels of a slice: pixels whose zero-filled
# energy exceeds BRIGHT (a quarter of the mean inside, half its RMS amplitude), counted against the support's pixels.
# ESPIRiT's support cut a hole into a neck angiogram crop filling its field of view (8 coils, 6 ACS lines;
# map_refinement.py's fresh2 set): 0.20-0.22 there, where CG-SENSE fell 5-7 dB below zero-filled with a misfit the
# refinement had brought to 4.7. The demo's brains with background at R 4 and 8: at most 0.058 (aliasing at R 8);
# nibabel's EPI, an abdomen, a T1 crop, a phantom scan, a noisy DWI at R 4-8: at most 0.014. A mean over all left-out
# pixels would not do: a hole's bright pixels are diluted by a large dark background.
MAX_SUPPORT_BRIGHT = 0.1
BRIGHT = 0.25


def support_bright_share(y: np.ndarray, maps: np.ndarray) -> list[float | None]:
    """Per slice, how many pixels outside ``maps``' support are bright in the zero-filled root-sum-of-squares image
    (energy above BRIGHT times the mean inside), over the support's pixel count (None where the support is empty).
    y (S, C, H, W) k-space, zero off the mask; maps (S, C, H, W)."""
    from .coils import rss
    from .operators import ifft2c

    out: list[float | None] = []
    for ys, ms in zip(y, maps):   # a slice at a time: a whole fastMRI volume's coil images would be 200+ MB more
        energy = rss(ifft2c(torch.from_numpy(np.ascontiguousarray(ys)))).numpy() ** 2   # (H, W)
        inside = np.abs(ms).sum(0) > 0   # not |S|²: maps of 1e-30 would square to 0 in float32
        out.append(float((energy[~inside] > BRIGHT * energy[inside].mean()).sum() / inside.sum())
                   if inside.any() else None)
    return out


def warn_if_support_cuts(share: list[float | None], method: str) -> None:
    """The warning ``reconstruct`` gives every method but zero_filled when a slice's maps leave out bright pixels
    (``support_bright_share`` above MAX_SUPPORT_BRIGHT): nothing is reconstructed there."""
    over = [(s, b) for s, b in enumerate(share) if b is not None and b > MAX_SUPPORT_BRIGHT]
    if over:
        s, b = max(over, key=lambda t: t[1])
        warn_below_zero_filled(
            f"{method}: the coil maps are zero where the image is bright (slice {s}: bright pixels outside the maps' "
            f"support number {b:.2f} of the support's; {len(over)} slice(s) over {MAX_SUPPORT_BRIGHT}), so anatomy "
            "there is lost and the image may be worse than zero-filled; pass maps= with a wider support, acquire "
            "more ACS lines, or compare with method='zero_filled'", "maps_support")


# A learned image's k-space columns that the scan lacks hold what the prior filled in. Zero-filled's error there is
# their true energy b; an image putting energy a there errs by a + b - 2ρ√(ab) (ρ its correlation with the truth),
# more than zero-filled unless ρ > √(a/b) / 2, and whatever ρ once a > 4b: the bar, where the made-up energy alone
# outweighs zero-filled's error (b is predicted by a power law in |k| fitted to the acquired non-ACS columns).
# benchmarks/prior_check.py, the demo's model on other anatomy: on the fresh and fresh2 sets `fast` above
# zero-filled had ratios <= 1.29; below it, the noisy neck with 12 coils 5.54 (R = 6, -2.54 dB: caught) and 2.38
# (R = 4, -0.48 dB), the neck with 8 coils 4.22 and 1.32 (-8.7 dB, maps-warned), the abdomen and the DWI 0.70 and
# 0.66 (-0.20, -0.23 dB): those three are not caught. A bar of 2, chosen first on those sets, gave false alarms on
# the noisy MNI152 / EPI sets (`fast` above zero-filled in all 24: ratios up to 2.50, EPI with σ 0.05 at R = 6, where
# CG-SENSE's is 2.59 too: the fit of few noisy columns under-predicts), so the bar is the bound; no set is held out
# for it (docs/reconstruction.md).
MAX_MISSING_ENERGY = 4.0


def missing_energy_ratio(img: np.ndarray, msk: np.ndarray) -> float | None:
    """Energy an image (S, H, W) puts on the k-space columns its column masks (S, W) lack, over what a power law in
    the distance from the centre, fitted to the log energies of the acquired columns outside the ACS block, predicts
    there (slices with one mask pooled); None when no mask has such columns at 2 distances from the centre (at one,
    the fit is degenerate: an exact power law scored up to 23) and a missing one."""
    from .masks import acs_columns
    from .operators import fft2c

    e = (np.abs(fft2c(np.ascontiguousarray(img))) ** 2).sum(axis=-2).reshape(-1, img.shape[-1])   # (S, W)
    W = e.shape[-1]
    d = np.maximum(np.abs(np.arange(W) - W // 2), 0.5)
    acquired = np.broadcast_to(np.asarray(msk).reshape(-1, W) != 0, e.shape)
    num = den = 0.0
    for row in np.unique(acquired, axis=0):
        outer, missing = row & ~acs_columns(row), ~row
        if len(np.unique(d[outer])) < 2 or not missing.any():
            continue
        es = e[(acquired == row).all(axis=1)].sum(axis=0)
        design = np.stack([np.log(d[outer]), np.ones(int(outer.sum()))], axis=1)
        (beta, alpha), *_ = np.linalg.lstsq(design, np.log(np.maximum(es[outer], 1e-30)), rcond=None)
        num += float(es[missing].sum())
        den += float(np.exp(alpha + beta * np.log(d[missing])).sum())
    return num / den if den > 0 else None


def warn_if_prior_overfills(ratio: float | None, method: str) -> None:
    """The warning ``reconstruct`` gives a learned method whose ``missing_energy_ratio`` exceeds MAX_MISSING_ENERGY."""
    if ratio is not None and ratio > MAX_MISSING_ENERGY:
        warn_below_zero_filled(
            f"{method}: the image puts {ratio:.1f}x the energy the acquired lines predict into the k-space columns "
            f"the scan lacks (over {MAX_MISSING_ENERGY:g}): the learned prior likely does not fit this anatomy or "
            "noise level, and the image may be worse than zero-filled; compare with method='sense', 'l1_wavelet' or "
            "'zero_filled'", "prior_energy")


def warn_if_underdetermined(rho: float, method: str, coils: int) -> None:
    """The warning ``reconstruct`` gives a linear method (sense, l1_wavelet) when ρ < MIN_SAMPLES_PER_UNKNOWN."""
    if rho < MIN_SAMPLES_PER_UNKNOWN:
        warn_below_zero_filled(
            f"{method}: {coils} coils x the acquired columns give only {rho:.2f} samples per unknown pixel of a row "
            f"(below {MIN_SAMPLES_PER_UNKNOWN}): the coils cannot unalias this acceleration, so the image may be "
            "noisier than zero-filled; use a lower acceleration, more coils, or a learned method", "underdetermined")
