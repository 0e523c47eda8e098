"""reconstruct(): accelerated multi-coil k-space in, images out — classical baselines and diffusion samplers.

Every slice is prepared exactly as training data is (``scan.prepare_scan``): readout oversampling cropped to the
model's image height, ESPIRiT maps and the intensity scale from the ACS lines only. Diffusion methods run on the
normalised data, batched over slices (and over posterior samples), with the settings ``sampling.policy`` takes from
the model's training record; the result is returned in the original intensity scale.
"""

from __future__ import annotations

import json
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import baselines
from .devices import resolve_device
from .errors import H5_DAMAGE, AmbientMRIError, DataFileError, volume_warnings
from .files import content_digest, ensure_space, refuse_unless_truncated_h5, write_h5
from .masks import COLUMN_KINDS, DEFAULT_CENTER_FRACTION, acs_width, kspace_mask
from .metrics import center_crop
from .operators import MultiCoilMRI
from .sampling import policy
from .scan import (
    REFINE_CLEAR_MISFIT,
    REFINE_CLEAR_RATIO,
    REFINE_SLICE_MISFIT,
    check_inputs,
    maps_misfit,
    missing_energy_ratio,
    model_rows,
    outer_line_snr,
    prepare_scan,
    samples_per_unknown,
    scan_noise_std,
    support_bright_share,
    warn_if_maps_misfit,
    warn_if_maps_unchecked,
    warn_if_noise_dominated,
    warn_if_prior_overfills,
    warn_if_support_cuts,
    warn_if_underdetermined,
    zero_filled_rss,
)
from .version import __version__

METHODS = policy.MRI_METHODS
CLASSICAL = baselines.METHODS
DIFFUSION = tuple(m for m in METHODS if m not in CLASSICAL)


@dataclass
class ReconResult:
    """image (S, H, W) complex in the input's scale; magnitude (S, h, w) at the target size; std (S, h, w) of the
    magnitude over posterior samples (num_samples > 1); nfe network evaluations per slice, all its samples counted;
    seconds."""

    image: np.ndarray
    magnitude: np.ndarray
    std: np.ndarray | None = None
    nfe: int = 0
    seconds: float = 0.0
    method: str = ""
    extra: dict = field(default_factory=dict)


def _maps_fail(fit: np.ndarray) -> bool:
    """Whether ``baselines.map_fit``'s (3, N) says the maps misfit enough to try refining them
    (``scan.REFINE_SLICE_MISFIT``), pooled or in any one slice: pooling a failing slice with one whose maps fit can
    halve its misfit."""
    return any(maps_misfit(t, REFINE_SLICE_MISFIT) for t in [baselines.misfit_of(fit), *baselines.slice_misfits(fit)])


def _every_slice_fit(y: np.ndarray, maps: np.ndarray, msk: np.ndarray, noise: np.ndarray,
                     central_fit: np.ndarray) -> np.ndarray:
    """``baselines.map_fit`` (3, S) of every slice, the central slices' (``central_fit``) not solved again."""
    S = y.shape[0]
    central = baselines.central_slices(S, baselines.VALIDATION_SLICES["sense"])
    others = np.setdiff1d(np.arange(S), central)
    fit = np.zeros((3, S))
    fit[:, central] = central_fit
    if others.size:
        fit[:, others] = baselines.map_fit(y, maps, msk, noise, slices=others)
    return fit


def _refined(y: np.ndarray, maps: np.ndarray, msk: np.ndarray, noise: np.ndarray, central_fit: np.ndarray,
             extra: dict) -> tuple[np.ndarray, tuple[float, float] | None, tuple]:
    """ESPIRiT's maps leave the central slices' data unexplained (``central_fit``: their ``baselines.map_fit``):
    per slice, where its own misfit exceeds ``scan.REFINE_SLICE_MISFIT`` (twice the noise), the maps of
    ``coils.refine_maps``, kept where they explain more and, where ESPIRiT's misfit is under the warning's
    threshold, refined without some acquired lines predict those lines better (``baselines.heldout_map_errors``;
    clearly better, by ``scan.REFINE_CLEAR_RATIO``, under ``scan.REFINE_CLEAR_MISFIT``; such a slice with no line to
    hold out keeps ESPIRiT's). A slice whose maps fit keeps them: refining maps that
    explain the data was mixed on brains with background (−1.2 to +0.6 dB, docs/reconstruction.md). -> maps, the
    central slices' misfit with them, and what the maps warning judges: (the worst slice's misfit if one still
    exceeds the thresholds, else the central slices'; True / False: those maps are refined ones / refining them did
    not help; None: not tried). ``extra``: ``maps_refined``, ``maps_refined_slices``, ``map_misfit_espirit``,
    ``map_misfit_slices`` (with the maps used), ``maps_heldout_ratio`` (per slice, (S,): refined over ESPIRiT's
    held-out error where that judged; else None)."""
    from .coils import REFINE_DEGREE, refine_maps

    S, C = y.shape[:2]
    central = baselines.central_slices(S, baselines.VALIDATION_SLICES["sense"])
    fit = _every_slice_fit(y, maps, msk, noise, central_fit)
    per_slice = baselines.slice_misfits(fit)
    bad = np.array([s for s in range(S) if maps_misfit(per_slice[s], REFINE_SLICE_MISFIT)], dtype=int)
    kept: list[int] = []
    ratio: list[float | None] = [None] * S
    if bad.size:
        new = refine_maps(torch.from_numpy(y[bad]), torch.from_numpy(maps[bad]), torch.from_numpy(msk[bad])).numpy()
        after = baselines.map_fit(y[bad], new, msk[bad], noise[bad], fitted=C * REFINE_DEGREE ** 2,
                                  slices=np.arange(bad.size))
        fits = [j for j, t in enumerate(baselines.slice_misfits(after))
                if t is not None and t[0] < per_slice[bad[j]][0]]
        # held-out lines judge only where ESPIRiT's misfit is under the warning's: above it they rejected maps that
        # gained 4.9 dB (T1 crop, 8 coils, R 4, 17 outer lines: refined from fewer lines, the maps predict worse)
        judged = [j for j in fits if not maps_misfit(per_slice[bad[j]])]
        keep = [j for j in fits if j not in judged]
        if judged:
            err = baselines.heldout_map_errors(y, maps, msk, bad[judged])
            for i, j in enumerate(judged):
                ratio[bad[j]] = float(err[1, i] / err[0, i]) if err[0, i] > 0 else None
                need = REFINE_CLEAR_RATIO if per_slice[bad[j]][0] <= REFINE_CLEAR_MISFIT else 1.0
                if ratio[bad[j]] is not None and ratio[bad[j]] < need:
                    keep.append(j)
            keep.sort()
        if keep:
            maps = maps.copy()
            maps[bad[keep]], fit[:, bad[keep]] = new[keep], after[:, keep]
            kept = [int(s) for s in bad[keep]]
            per_slice = baselines.slice_misfits(fit)
    extra.update(map_misfit_espirit=baselines.misfit_of(central_fit)[0], maps_refined=bool(kept),
                 maps_refined_slices=kept, map_misfit_slices=[None if t is None else t[0] for t in per_slice],
                 maps_heldout_ratio=ratio)
    central_misfit = baselines.misfit_of(fit[:, central])
    return maps, central_misfit, _judged(per_slice, central_misfit, kept, bool(kept) if bad.size else None)


def _judged(per_slice: list, central_misfit: tuple[float, float] | None, kept: list[int],
            refined: bool | None) -> tuple:
    """What the maps warning judges: the worst slice's misfit (and whether its maps are refined ones; None where
    ``refined`` is None: nothing was tried, e.g. maps given) if a slice fails the threshold alone, else the central
    slices' pooled misfit and ``refined``."""
    worst = max((s for s in range(len(per_slice)) if maps_misfit(per_slice[s])), default=None,
                key=lambda s: per_slice[s][0])
    if worst is not None:
        return per_slice[worst], (worst in kept) if refined is not None else None
    return central_misfit, refined


def _maps_range(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """x (B, H, W) -> S^H S x: the image where the coil maps see it. Outside the maps' support no measurement
    (and no training loss) constrains a network's output, so what a sampler leaves there is not image content;
    CG-SENSE's iterates lie in this range already."""
    return (maps.abs() ** 2).sum(1) * x


def _diffusion(m: policy.Method, model, k, msk, y, maps, scales, steps, num_samples, seed, device, batch_size,
               progress, extra: dict, opts: dict) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Posterior samples of every slice (normalised y (S, C, H, W), maps, column masks (S, W)) -> mean image
    (S, H, W), std of the magnitude in the input's scale (or None), network evaluations per slice."""
    S, _, H, W = y.shape
    model = model.to(device).eval()
    reps = max(1, int(num_samples))
    yy = torch.from_numpy(np.repeat(y, reps, axis=0))
    mm = torch.from_numpy(np.repeat(msk, reps, axis=0))[:, None, None, :]
    pp = torch.from_numpy(np.repeat(maps, reps, axis=0))
    opts = dict(opts)
    a_tilde = opts.pop("a_tilde", None)
    noise = None
    if m.name == "fast":  # σ_n per slice in the input's scale: given, or estimated from the scan
        given = opts.pop("noise_std", None)
        noise = scan_noise_std(k, msk) if given is None else np.full(S, float(given))
        extra["noise_std"] = noise.tolist()
        noise = torch.from_numpy(np.repeat(noise / scales, reps).astype(np.float32))
        # λ floor of the CG steps: the Tikhonov weight this scan's held-out non-ACS lines choose. Without it
        # the last steps (σ_n²/σ_i² small) are near-unregularised SENSE, which poorly conditioned maps (few ACS
        # lines, many coils) turn into noise below zero-filled (docs/reconstruction.md)
        if opts.get("lam") is None:
            opts["lam"] = baselines.tikhonov_floor(y, maps, msk, seed)
        extra["lam"] = float(opts["lam"])
    bs = batch_size or yy.shape[0]
    outs, nfe = [], 0
    for i, start in enumerate(range(0, yy.shape[0], bs)):
        sl = slice(start, start + bs)
        yb, mb, pb = yy[sl].to(device), mm[sl].to(device), pp[sl].to(device)
        prior = policy.mri_prior(model, m, mb, pb, seed + 7919 * i, a_tilde)
        x = policy.sample(m, prior, yb, MultiCoilMRI(pb, mb), (yb.shape[0], H, W), mb, steps, seed + 7919 * i,
                          progress=progress, **opts, **({} if noise is None else {"noise_std": noise[sl].to(device)}))
        outs.append(_maps_range(x, pb).detach().cpu())
        nfe = prior.nfe
    samples = torch.cat(outs).numpy().reshape(S, reps, H, W)
    std = np.abs(samples * scales[:, None, None, None]).std(1) if reps > 1 else None
    return samples.mean(1), std, nfe * reps  # each sample is its own trajectory (batched, but each costs)


# A reconstruction is a redistribution of the acquired energy plus what the prior fills in: its peak stays within a
# few times the zero-filled image's (at most ~R). Far beyond it, the solve diverged: e.g. maps identical in every coil
# (no unaliasing) gave a learned method's image a peak 1e9 times the data's, finite and written as a result. The
# zero-filled image is the maps' least-squares combination of the coil images, in the scale of x whatever the maps'.
MAX_PEAK_OVER_ZERO_FILLED = 100.0


def check_bounded(img: np.ndarray, y: np.ndarray, maps: np.ndarray, method: str) -> None:
    """Refuse a reconstruction (S, H, W) whose peak exceeds MAX_PEAK_OVER_ZERO_FILLED times that of the
    zero-filled ``coils.sense_combine`` of its data y (S, C, H, W) with its maps (S, C, H, W), slice by slice, or
    that is not finite."""
    from .coils import sense_combine
    from .operators import ifft2c

    zf = np.abs(sense_combine(ifft2c(y), maps)).reshape(y.shape[0], -1).max(1)
    peak = np.abs(img).reshape(img.shape[0], -1).max(1)
    bad = ~np.isfinite(peak) | (peak > MAX_PEAK_OVER_ZERO_FILLED * zf)
    if bad.any():
        s = int(np.flatnonzero(bad)[0])
        raise AmbientMRIError(f"{method}: the reconstruction diverged (slice {s}: peak {peak[s]:.3g}, "
                              f"{peak[s] / max(zf[s], 1e-30):.3g} times the zero-filled image's): the coil maps "
                              "cannot unalias these data (maps alike in every coil?); check maps=, or compare with "
                              "method='zero_filled'")


def reconstruct(kspace, mask, model=None, maps=None, method: str = "adps", steps: int | None = None,
                num_samples: int = 1, seed: int = 0, device=None, batch_size: int | None = None,
                progress: bool = True, target_size: tuple[int, int] | None = None, coils: int | None = None,
                **opts) -> ReconResult:
    """Reconstruct accelerated multi-coil MRI. See ../docs/reconstruction.md for every method and its cost.

    kspace: (S, C, H, W) or (C, H, W) complex acquired data (zeros off-mask are enforced); mask: (W,), (H, W),
    (1, H, W), or per slice (S, W) / (S, 1|H, W) (with S == H, (S, W) is ambiguous: use (S, 1, W)). model: a
    Denoiser or a model-file path (diffusion methods). maps None -> ESPIRiT from the ACS.
    Classical baselines: zero_filled (A^H y), sense (CG-SENSE: up to 100 CG steps on (A^H A + λ I) x = A^H y),
    l1_wavelet (sigpy's, plus an ℓ2 term ``l2=``, default ``baselines.tikhonov_floor``); for both, λ is chosen on
    held-out acquired lines of the scan itself unless ``lam=`` is given (``iters=`` sets the iterations); both warn
    when the coils cannot unalias, when the lines outside the ACS block are mostly noise (``extra["outer_line_snr"]``),
    and when no line can be held out. Every method but zero_filled checks that the maps explain the data
    (``extra["map_misfit"]``, ``extra["map_unexplained"]``; readout-oversampled scans): where ESPIRiT's maps do not,
    they are refined per slice from every acquired line (``coils.refine_maps``, ``extra["maps_refined_slices"]``;
    under the warning's threshold only where maps refined without some lines predict those lines better,
    ``extra["maps_heldout_ratio"]``), and if the maps used still do not (in any slice where maps are given or the
    refinement was tried, else in the central slices), it warns; a learned method warns too when no image row
    allows the check. Every method but zero_filled warns when the maps are zero where the zero-filled image is
    bright (``extra["maps_support_bright"]``).
    target_size: magnitude crop, default (min(H, W), W) — fastMRI's 320x320 for 640x320 k-space. coils: compress
    each slice to K virtual coils (SVD of its ACS columns, as ``prepare --coils``) before everything else: cost per
    slice falls with K.
    """
    m = policy.method(method, "mri", opts)
    policy.check_run(m, steps, num_samples, batch_size, seed)
    dev = resolve_device(device)  # checked for every method: the classical ones run on the CPU, but a wrong name
    # or a missing GPU is the caller's mistake either way
    if target_size is not None and not (isinstance(target_size, (tuple, list)) and len(target_size) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in target_size)):
        raise AmbientMRIError(f"target_size must be two integers >= 1 (rows, columns), got {target_size!r}")
    tic = time.time()
    k, msk = check_inputs(kspace, mask)
    S, C, H0, W = k.shape
    if m.diffusion:
        if model is None:
            raise AmbientMRIError(f"method {method!r} needs a model (model= a model file or a loaded model)")
        if isinstance(model, (str, Path)):
            from .model import load_model

            model = load_model(model)
        rows = model_rows(model, H0, W)  # before the (slow) coil-map estimation
    else:  # crop the readout oversampling, but never below the rows asked for
        rows = min(H0, max(W, int(target_size[0]) if target_size else 0)) if H0 >= 2 * W else H0
    if target_size and (int(target_size[0]) > rows or int(target_size[1]) > W):
        raise AmbientMRIError(f"target size {int(target_size[0])}x{int(target_size[1])} is larger than the "
                              f"{rows}x{W} image " + ("the model reconstructs" if m.diffusion else "of this k-space"))
    ks, mps, scales = prepare_scan(k, msk, rows, maps, coils)
    y = ks / scales[:, None, None, None]
    H = ks.shape[-2]
    extra: dict = {"scale": scales.tolist(), "coils": int(ks.shape[1]),
                   "samples_per_unknown": samples_per_unknown(mps, msk),
                   "acquired_columns": msk.sum(1).astype(int).tolist()}  # per slice, after check_inputs
    std, nfe = None, 0
    # the noise level is read from the readout oversampling, so only a cropped scan has one
    noise = scan_noise_std(k, msk) if H < H0 and method != "zero_filled" else None
    if noise is not None:
        sigma = noise / scales                                    # in y's scale
        fit = baselines.map_fit(y, mps, msk, sigma)               # the central slices'
        misfit = baselines.misfit_of(fit)
        judged = (misfit, None)
        if maps is None and _maps_fail(fit):
            mps, misfit, judged = _refined(y, mps, msk, sigma, fit, extra)
        elif maps is not None and misfit is not None:   # given maps are judged slice by slice too: pooled with
            # slices they fit, one they do not was missed (phantom, σ 0.006: one slice at 12.4, the pair under 12)
            per_slice = baselines.slice_misfits(_every_slice_fit(y, mps, msk, sigma, fit))
            extra["map_misfit_slices"] = [None if t is None else t[0] for t in per_slice]
            judged = _judged(per_slice, misfit, [], None)
        extra["map_misfit"], extra["map_unexplained"] = misfit or (None, None)
        warn_if_maps_misfit(*judged, method=method)
        if misfit is None and m.diffusion and bool((noise > 0).any()):
            warn_if_maps_unchecked(method, int(ks.shape[1]))
    if method != "zero_filled":
        extra["maps_support_bright"] = support_bright_share(y, mps)
        warn_if_support_cuts(extra["maps_support_bright"], method)
    if method in ("sense", "l1_wavelet"):
        warn_if_underdetermined(extra["samples_per_unknown"], method, int(ks.shape[1]))
        if noise is not None:
            extra["outer_line_snr"] = outer_line_snr(ks, msk, noise)
            warn_if_noise_dominated(extra["outer_line_snr"], method)
    if not m.diffusion:
        img, info = baselines.classical(method, y, mps, msk, seed, opts)
        extra.update(info)
    else:
        n_steps = steps or policy.default_steps(m, model.record)
        img, std, nfe = _diffusion(m, model, k, msk, y, mps, scales, n_steps, num_samples, seed, dev, batch_size,
                                   progress, extra, opts)
    if method != "zero_filled":
        check_bounded(img, y, mps, method)
    img = (img * scales[:, None, None]).astype(np.complex64)
    if m.diffusion:
        extra["missing_energy"] = missing_energy_ratio(img, msk)
        warn_if_prior_overfills(extra["missing_energy"], method)
    tsize = target_size or (min(H, W), W)
    mag = center_crop(np.abs(img), tsize).astype(np.float32)
    if std is not None:
        std = center_crop(std, tsize).astype(np.float32)
    return ReconResult(image=img, magnitude=mag, std=std, nfe=nfe, seconds=time.time() - tic, method=method,
                       extra=extra)


def check_not_foreign(out: Path, option: str = "--output") -> None:
    """An existing readable HDF5 file that is not a reconstruction this package wrote is someone's data (e.g. a
    fastMRI submission file of the same name, holding only 'reconstruction', or another raw volume): never
    overwrite it."""
    import h5py

    if not out.exists():
        return
    try:
        with h5py.File(out, "r") as f:  # ours: a reconstruction with the method (and settings) reconstruct records
            foreign = "reconstruction" not in f or not ({"settings", "method"} & set(f.attrs))
    except H5_DAMAGE as err:
        refuse_unless_truncated_h5(out, err, option)  # a truncated reconstruction is redone; a text file is not
        return
    if foreign:
        raise DataFileError(out, "exists and is not a reconstruction file ambient-mri wrote; it will not be "
                            "overwritten")


def reconstruct_file(in_path, out_path, mask: str | None = None, acceleration: float | None = None,
                     center_fraction: float | None = None, settings: str | None = None, **options) -> Path:
    """Official fastMRI file in -> fastMRI-format reconstruction file out (dataset ``reconstruction`` (S, h, w)
    float32, as ``fastmri.save_reconstructions``), written atomically. Test files use their own ``mask``;
    fully-sampled files are undersampled retrospectively with ``mask``/``acceleration``/``center_fraction``
    (seeded by the file name, as fastMRI does). ``settings``: a string stored as the ``settings`` attribute, by
    which a resumed folder run recognises a finished output."""

    if Path(out_path).resolve() == Path(in_path).resolve():
        raise DataFileError(out_path, f"is the input file {in_path}: refusing to write over input data")
    check_not_foreign(Path(out_path), "out_path")

    from .data import read_fastmri

    vol = read_fastmri(in_path)
    k = np.asarray(vol.kspace)
    if k.ndim != 4:
        raise DataFileError(in_path, "single-coil files are not supported by reconstruct (multi-coil only)")
    if vol.mask is not None:
        given = [n for n, v in (("acceleration", acceleration), ("mask", mask), ("center_fraction", center_fraction))
                 if v is not None]
        if given:  # each would be ignored (and recorded) while the file's own mask is used
            raise DataFileError(in_path, "is already undersampled (it has a mask): reconstruct it without "
                                f"{', '.join(given)} (its own mask is used)")
        m = vol.mask
    else:
        if acceleration is None:
            raise DataFileError(in_path, "has no mask: give acceleration (and mask, center_fraction) to undersample")
        if (mask or "random") not in COLUMN_KINDS:
            raise AmbientMRIError(f"mask {mask!r} is not a column mask kind; choose one of {', '.join(COLUMN_KINDS)}")
        cf = DEFAULT_CENTER_FRACTION if center_fraction is None else center_fraction
        m = kspace_mask(mask or "random", k.shape[-2:], acceleration, cf,
                        seed=Path(in_path).name)[0]
    m = vol.acquired(m)  # zero-padded columns were never acquired (as prepare, and fastmri's apply_mask)
    h, w = vol.header.get("recon_size", (min(k.shape[-2], k.shape[-1]), k.shape[-1]))[:2]
    if w > k.shape[-1]:  # fastMRI's "FLAIR 203" rule (transforms, varnet): a recon wider than the k-space -> W x W
        h = w = k.shape[-1]
    if not (1 <= h <= k.shape[-2] and 1 <= w <= k.shape[-1]):  # as prepare refuses it
        raise DataFileError(in_path, f"header recon size {h}x{w} does not fit the k-space {k.shape[-2]}x{k.shape[-1]}")
    size = options.pop("target_size", None) or (int(h), int(w))  # the header's, unless the caller gives one
    try:
        with volume_warnings(in_path) as below:
            res = reconstruct(k, m, target_size=size, **options)
    except DataFileError:
        raise
    except AmbientMRIError as e:  # name the file; for a retrospective mask, say how to get more ACS lines
        hint = ""
        if vol.mask is None and "ACS" in str(e) and np.abs(k).reshape(k.shape[0], -1).max(1).all():
            hint = (f" (the retrospective mask has {acs_width(m)} ACS lines with center_fraction "
                    f"{cf}: give a larger one)")
        raise DataFileError(in_path, f"{e}{hint}") from None
    out_path = Path(out_path)
    h, w = res.magnitude.shape[-2:]
    if not (np.isfinite(res.magnitude).all() and (res.std is None or np.isfinite(res.std).all())):
        raise DataFileError(in_path, f"the {res.method} reconstruction is not finite (NaN or Inf); nothing written")
    ensure_space(out_path.parent, 4 * k.shape[0] * h * w * (3 if res.std is not None else 2), out_path.name)
    datasets = {"reconstruction": res.magnitude, "zero_filled": zero_filled_rss(k, m, (h, w))}
    if res.std is not None:
        datasets["std"] = res.std
    acquired = sum(res.extra["acquired_columns"])  # the columns used: marked ones without data were dropped
    attrs = {"method": res.method, "nfe": res.nfe, "acceleration": float(k.shape[0] * k.shape[-1] / acquired),
             "warnings": json.dumps(below), "content_sha256": content_digest(datasets),
             "ambient_mri_version": __version__}  # not in settings: an upgrade alone does not redo finished files
    write_h5(out_path, datasets, attrs | ({} if settings is None else {"settings": settings}))
    return out_path

