"""reconstruct(): accelerated multi-coil k-space in, images out — classical baselines and diffusion samplers.

Every slice is prepared exactly as training data is (``ambient_mri.data.prepared.prepare_slice``): readout
oversampling cropped to the model's image height, ESPIRiT maps and the intensity scale from the ACS lines only.
Diffusion methods run on the normalised data, batched over slices (and over posterior samples); the result is
returned in the original intensity scale.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .devices import resolve_device
from .errors import AmbientMRIError, DataFileError
from .files import atomic_path, ensure_space
from .masks import COLUMN_KINDS, acs_width, further_mask, kspace_mask
from .metrics import center_crop
from .operators import MultiCoilMRI
from .solvers import conjugate_gradient

CLASSICAL = ("zero_filled", "sense", "l1_wavelet")
DIFFUSION = ("adps", "dps", "ald", "one_step", "fast")
METHODS = CLASSICAL + DIFFUSION
DEFAULT_STEPS = {"adps": 500, "dps": 500, "ald": 500, "fast": 50, "one_step": 1}
# fast: defaults by kind of prior (ambient model?), chosen on the demo calibration volume, never on the scored one
# (benchmarks/tune_fast.py): cg_iters CG steps between denoiser calls (an ambient D leaves much to the data; a
# clean D is sharp, and long CG on its output fits noise), DiffPIR's data weight ρ (λ_i = ρ σ_n² / σ_i², σ_n
# estimated from the scan, data.prepared.noise_std) and the DDIM noise η.
FAST_DEFAULTS = {True: {"cg_iters": 20, "rho": 10.0, "eta": 0.0}, False: {"cg_iters": 10, "rho": 10.0, "eta": 0.5}}
_SCHEDULE = ("sigma_max", "sigma_min", "a_tilde")
OPTIONS = {"zero_filled": (), "sense": ("lam", "iters"), "l1_wavelet": ("lam", "iters"), "one_step": ("sigma",),
           "fast": (*_SCHEDULE, "cg_iters", "eta", "lam", "rho", "noise_std"), "adps": (*_SCHEDULE, "zeta"),
           "dps": (*_SCHEDULE, "zeta"), "ald": (*_SCHEDULE, "eps", "gamma")}
L1_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
L1_DEFAULT = 1e-3      # when no non-ACS line can be held out to choose λ
SENSE_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
SENSE_DEFAULT = 1e-3
SENSE_ITERS = 100
SENSE_TOL = 1e-5       # CG stops early at this relative residual


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


def _as_numpy(a, name: str) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def check_inputs(kspace, mask) -> tuple[np.ndarray, np.ndarray]:
    """-> k-space (S, C, H, W) complex64 zeroed off the mask, and per-slice column masks (S, W)."""
    k = _as_numpy(kspace, "kspace")
    if not np.iscomplexobj(k):
        raise AmbientMRIError(f"kspace must be complex, got {k.dtype}")
    if k.ndim == 3:
        k = k[None]
    if k.ndim != 4:
        raise AmbientMRIError(f"kspace must be (S, C, H, W) or (C, H, W), got shape {k.shape}")
    if not np.isfinite(k).all():
        raise AmbientMRIError("kspace contains NaN or Inf")
    S, _, H, W = k.shape
    m = _as_numpy(mask, "mask").astype(np.float32)
    if m.ndim == 0 or m.shape[-1] != W:
        raise AmbientMRIError(f"mask of shape {np.shape(mask)}: its width does not match the k-space width {W}")
    if not np.isfinite(m).all():
        raise AmbientMRIError("mask contains NaN or Inf")
    if (m.ndim == 2 and m.shape[0] == H and H != S) or (m.ndim == 3 and m.shape[:2] == (S, H) and H > 1):
        # (H, W) or per-slice (S, H, W) column masks
        if not (m == m[..., :1, :]).all():
            raise AmbientMRIError("the mask varies along the readout (rows): reconstruct takes Cartesian "
                                  "column (phase-encode) masks only")
        m = m[..., :1, :]
    m = np.broadcast_to(m.reshape(-1, W), (S, W)).copy() if m.reshape(-1, W).shape[0] in (1, S) else None
    if m is None:
        raise AmbientMRIError(f"mask of shape {np.shape(mask)} is not (W,), (H, W), one row per slice ({S}, W) "
                              f"or per-slice ({S}, H, W)")
    if not (m != 0).any(axis=1).all():
        raise AmbientMRIError("mask is all zero for at least one slice: nothing was acquired")
    return (k * m[:, None, None, :]).astype(np.complex64), m


def prepare_scan(k: np.ndarray, m: np.ndarray, rows: int | None, maps=None):
    """Per slice: readout crop, ESPIRiT maps (unless given) and the intensity scale, from the ACS lines only."""
    from .data.prepared import calibration_columns, calibration_scale, prepare_slice, row_crop

    S, _, _, W = k.shape
    if maps is not None:
        maps = _as_numpy(maps, "maps")
        if maps.ndim not in (3, 4) or (maps.ndim == 4 and maps.shape[0] not in (1, S)):
            raise AmbientMRIError(f"maps must be (C, H, W) or (S={S}, C, H, W), got shape {maps.shape}")
    ks, mps, scales = [], [], []
    for s in range(S):
        lines = np.flatnonzero(m[s])
        if maps is None:
            try:
                p = prepare_slice(k[s][..., lines], lines, W, rows=rows)
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
            ks.append(full * m[s]), mps.append(mp.astype(np.complex64))
            scales.append(calibration_scale(full * m[s], mp, calibration_columns(m[s])))
    return np.stack(ks), np.stack(mps), np.asarray(scales, np.float32)


def scan_noise_std(k: np.ndarray, m: np.ndarray) -> np.ndarray:
    """(S,) thermal noise per k-space sample of each slice (data.prepared.noise_std on its acquired columns), in
    the input's scale."""
    from .data.prepared import noise_std

    return np.array([noise_std(k[s][..., np.flatnonzero(m[s])]) for s in range(k.shape[0])])


def _training_type_mask(info: dict, width: int, batch: int, seed: int) -> torch.Tensor:
    """A fresh Ã of the kind the ambient model was trained with (A-DPS): the training mask settings recorded in
    the model file, then its further corruption."""
    d = info.get("data", {}).get("mask", {})
    kind, R, cf = d.get("kind"), d.get("acceleration"), d.get("center_fraction")
    if not (kind and R and cf):
        raise AmbientMRIError("the model file does not record its training mask (mask_kind, acceleration, "
                              "center_fraction); cannot draw a training-type Ã")
    fur = _further_settings(info)
    rows = []
    for b in range(batch):
        a = kspace_mask(kind if kind != "poisson2d" else "random", (1, width), float(R), float(cf), seed=(seed, b))
        rows.append(further_mask(a, seed=(seed, b, 1), **fur) if fur else a)
    return torch.from_numpy(np.stack(rows))[:, None]  # (B, 1, 1, W)


def _further_settings(info: dict) -> dict:
    return {k: v for k, v in info.get("further", {}).items() if k in ("extra_lines", "delta", "acs_lines") and
            v is not None}


def _scan_mask_tilde(mask: torch.Tensor, info: dict, seed: int) -> torch.Tensor:
    """Ã ⊂ the scan's own mask (B, 1, 1, W): the model's further corruption applied to the acquired lines, exactly
    as training applied it to each training mask, so the network sees only measured k-space lines (the fast
    sampler's default: +0.4-0.6 dB over a fresh training-type Ã on the demo model, docs/reconstruction.md)."""
    fur = _further_settings(info)
    if not fur:
        return mask.clone()
    rows = [further_mask(mask[b].cpu().numpy(), seed=(seed, b, 2), **fur) for b in range(mask.shape[0])]
    return torch.from_numpy(np.stack(rows)).to(mask.device)


def check_multicoil_model(model) -> dict:
    """The model's training record, if the model suits multi-coil k-space; else an AmbientMRIError saying why."""
    info = getattr(model, "info", None)
    if not isinstance(info, dict):
        raise AmbientMRIError(f"model must be a model file or a loaded ambient_mri model (load_model), got "
                              f"{type(model).__name__}")
    if info.get("operator") != "multicoil":
        raise AmbientMRIError(f"model was trained for the {info.get('operator')!r} operator, not multi-coil MRI")
    return info


def _model_rows(model, H0: int, W: int) -> int:
    """Check that ``model`` suits multi-coil k-space (S, C, H0, W); -> its image rows (the readout crop)."""
    info = check_multicoil_model(model)
    shape = tuple(int(v) for v in info.get("image_shape", ()))
    if not shape:
        return H0
    h, w = shape[-2:]
    if w != W or h > H0:
        raise AmbientMRIError(f"model was trained on {h}x{w} images but the k-space is {H0}x{W} (rows can only be "
                              "cropped, columns must match); retrain at this size or resample the data")
    return h


def _diffusion(method: str, model, y, mask, maps, steps, seed, info, device, progress, **opts):
    from .sampling import Prior, adps, ald, ambient_sigma_floor, dps, fast_dc, one_step, one_step_sigma

    B, _, H, W = y.shape
    A = MultiCoilMRI(maps, mask)
    ambient = bool(info.get("ambient"))
    if method == "one_step":
        prior = Prior(model)
        x = one_step(prior, y, A, mask, sigma=opts.get("sigma", one_step_sigma(info)))
        return _maps_range(x, maps), prior.nfe
    if ambient:
        opts.setdefault("sigma_min", ambient_sigma_floor(info))
        a_tilde = opts.pop("a_tilde", "scan" if method == "fast" else "training")
        if a_tilde not in ("training", "scan"):
            raise AmbientMRIError(f"a_tilde must be 'training' or 'scan', got {a_tilde!r}")
        mt = (_training_type_mask(info, W, B, seed).to(device) if a_tilde == "training"
              else _scan_mask_tilde(mask, info, seed))
        prior = Prior(model, MultiCoilMRI(maps, mt), mt)
    else:  # a clean multi-coil model was trained on A^H A (x0 + σ n) with a full mask: feed it the same
        full = torch.ones_like(mask)
        prior = Prior(model, MultiCoilMRI(maps, full), full)
    if method == "fast":
        opts = {**FAST_DEFAULTS[ambient], **opts}
    fn = {"adps": adps, "dps": dps, "ald": ald, "fast": fast_dc}[method]
    if method == "adps" and not ambient:
        fn = dps
    x = fn(prior, y, A, (B, H, W), steps=steps, seed=seed, progress=progress, **opts)
    return _maps_range(x, maps), prior.nfe


def _maps_range(x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """x (B, H, W) -> S^H S x: the image where the coil maps see it. Outside the maps' support no measurement
    (and no training loss) constrains a network's output, so what a sampler leaves there is not image content;
    CG-SENSE's iterates lie in this range already."""
    return (maps.abs() ** 2).sum(1) * x


def _acs_columns(mask: np.ndarray) -> np.ndarray:
    """(W,) bool: the contiguous block of acquired columns through the centre column W // 2."""
    cols = np.asarray(mask).reshape(-1) != 0
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


def _holdout(mask: np.ndarray, seed) -> tuple[np.ndarray, np.ndarray] | None:
    """Hold out 10% (at least one) of the acquired non-ACS columns of a column mask (W,): -> (mask without them,
    their indices), or None when every acquired column is an ACS column."""
    cand = np.flatnonzero((np.asarray(mask) != 0) & ~_acs_columns(mask))
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


def _classical(method: str, y: np.ndarray, maps: np.ndarray, m: np.ndarray, seed: int, opts: dict) -> tuple:
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


def reconstruct(kspace, mask, model=None, maps=None, method: str = "adps", steps: int | None = None,
                num_samples: int = 1, seed: int = 0, device=None, batch_size: int | None = None,
                progress: bool = True, target_size: tuple[int, int] | None = None, **opts) -> ReconResult:
    """Reconstruct accelerated multi-coil MRI. See ../docs/reconstruction.md for every method and its cost.

    kspace: (S, C, H, W) or (C, H, W) complex acquired data (zeros off-mask are enforced); mask: (W,), (H, W),
    or (S, W). model: a Denoiser or a model-file path (diffusion methods). maps None -> ESPIRiT from the ACS.
    Classical baselines: zero_filled (A^H y), sense (CG-SENSE: up to 100 CG steps on (A^H A + λ I) x = A^H y),
    l1_wavelet (sigpy); for both, λ is chosen on held-out acquired lines of the scan itself unless ``lam=`` is
    given (``iters=`` sets the iterations). target_size: magnitude crop, default
    (min(H, W), W) — fastMRI's 320x320 for 640x320 k-space.
    """
    if method not in METHODS:
        raise AmbientMRIError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    unknown = sorted(set(opts) - set(OPTIONS[method]))
    if unknown:
        raise AmbientMRIError(f"option(s) {', '.join(unknown)} do not apply to method {method!r}; its options: "
                              f"{', '.join(OPTIONS[method]) or 'none'}")
    for name, v in (("steps", steps), ("num_samples", num_samples), ("batch_size", batch_size)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < 1):
            raise AmbientMRIError(f"{name} must be a positive integer, got {v!r}")
    for name in ("noise_std", "rho"):
        v = opts.get(name)
        if v is not None and not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
            raise AmbientMRIError(f"{name} must be a finite number >= 0, got {v!r}")
    tic = time.time()
    k, m = check_inputs(kspace, mask)
    S, C, H0, W = k.shape
    if method in DIFFUSION:
        if model is None:
            raise AmbientMRIError(f"method {method!r} needs a model (model= a model file or a loaded model)")
        if isinstance(model, (str, Path)):
            from .model import load_model

            model = load_model(model)
        rows = _model_rows(model, H0, W)  # before the (slow) coil-map estimation
        dev = resolve_device(device)
    else:
        rows = min(H0, W) if H0 >= 2 * W else H0
    ks, mps, scales = prepare_scan(k, m, rows, maps)
    y = ks / scales[:, None, None, None]
    H = ks.shape[-2]
    extra: dict = {"scale": scales.tolist()}
    std = None
    nfe = 0
    if method in CLASSICAL:
        img, info = _classical(method, y, mps, m, seed, opts)
        extra.update(info)
    else:
        model = model.to(dev).eval()
        n_steps = steps or DEFAULT_STEPS[method]
        reps = max(1, int(num_samples))
        yy = torch.from_numpy(np.repeat(y, reps, axis=0))
        mm = torch.from_numpy(np.repeat(m, reps, axis=0))[:, None, None, :]
        pp = torch.from_numpy(np.repeat(mps, reps, axis=0))
        noise = None
        if method == "fast":  # σ_n per slice in the input's scale: given, or estimated from the scan
            given = opts.pop("noise_std", None)
            noise = scan_noise_std(k, m) if given is None else np.full(S, float(given))
            extra["noise_std"] = noise.tolist()
            noise = torch.from_numpy(np.repeat(noise / scales, reps).astype(np.float32))
        bs = batch_size or yy.shape[0]
        outs = []
        for i, start in enumerate(range(0, yy.shape[0], bs)):
            sl = slice(start, start + bs)
            x, nfe = _diffusion(method, model, yy[sl].to(dev), mm[sl].to(dev), pp[sl].to(dev), n_steps,
                                seed + 7919 * i, model.info, dev, progress, **opts,
                                **({} if noise is None else {"noise_std": noise[sl].to(dev)}))
            outs.append(x.detach().cpu())
        nfe *= reps  # each slice's samples are separate trajectories (batched, but each one evaluates the network)
        samples = torch.cat(outs).numpy().reshape(S, reps, H, W)
        img = samples.mean(1)
        if reps > 1:
            std = np.abs(samples * scales[:, None, None, None]).std(1)
    img = (img * scales[:, None, None]).astype(np.complex64)
    tsize = target_size or (min(H, W), W)
    mag = center_crop(np.abs(img), tsize).astype(np.float32)
    if std is not None:
        std = center_crop(std, tsize).astype(np.float32)
    return ReconResult(image=img, magnitude=mag, std=std, nfe=nfe, seconds=time.time() - tic, method=method,
                       extra=extra)


def _zero_filled_rss(k: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """fastMRI's zero-filled baseline: RSS of the inverse FFT of the undersampled k-space, centre-cropped."""
    from .coils import rss
    from .operators import ifft2c

    img = rss(ifft2c(torch.from_numpy(k * m.reshape(-1, 1, 1, k.shape[-1])))).numpy()
    return center_crop(img, size).astype(np.float32)


def reconstruct_file(in_path, out_path, mask: str | None = None, acceleration: float | None = None,
                     center_fraction: float | None = None, settings: str | None = None, **options) -> Path:
    """Official fastMRI file in -> fastMRI-format reconstruction file out (dataset ``reconstruction`` (S, h, w)
    float32, as ``fastmri.save_reconstructions``), written atomically. Test files use their own ``mask``;
    fully-sampled files are undersampled retrospectively with ``mask``/``acceleration``/``center_fraction``
    (seeded by the file name, as fastMRI does). ``settings``: a string stored as the ``settings`` attribute, by
    which a resumed folder run recognises a finished output."""
    import h5py

    if Path(out_path).resolve() == Path(in_path).resolve():
        raise DataFileError(out_path, f"is the input file {in_path}: refusing to write over input data")

    from .data import read_fastmri

    vol = read_fastmri(in_path)
    k = np.asarray(vol.kspace)
    if k.ndim != 4:
        raise DataFileError(in_path, "single-coil files are not supported by reconstruct (multi-coil only)")
    if vol.mask is not None:
        if acceleration is not None:
            raise DataFileError(in_path, "is already undersampled (it has a mask): reconstruct it without "
                                "acceleration (its own mask is used)")
        m = vol.mask
    else:
        if acceleration is None:
            raise DataFileError(in_path, "has no mask: give acceleration (and mask, center_fraction) to undersample")
        if (mask or "random") not in COLUMN_KINDS:
            raise AmbientMRIError(f"mask {mask!r} is not a column mask kind; choose one of {', '.join(COLUMN_KINDS)}")
        m = kspace_mask(mask or "random", k.shape[-2:], acceleration, center_fraction or 0.08,
                        seed=Path(in_path).name)[0]
    h, w = vol.header.get("recon_size", (min(k.shape[-2], k.shape[-1]), k.shape[-1]))[:2]
    try:
        res = reconstruct(k, m, target_size=(int(h), int(w)), **options)
    except DataFileError:
        raise
    except AmbientMRIError as e:  # name the file; for a retrospective mask, say how to get more ACS lines
        hint = ""
        if vol.mask is None and "ACS" in str(e):
            hint = (f" (the retrospective mask has {acs_width(m)} ACS lines with center_fraction "
                    f"{center_fraction or 0.08}: give a larger one)")
        raise DataFileError(in_path, f"{e}{hint}") from None
    out_path = Path(out_path)
    h, w = int(h), int(w)
    ensure_space(out_path.parent, 4 * k.shape[0] * h * w * (3 if res.std is not None else 2), out_path.name)
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=res.magnitude)
        f.create_dataset("zero_filled", data=_zero_filled_rss(k, m, (h, w)))
        if res.std is not None:
            f.create_dataset("std", data=res.std)
        f.attrs["method"] = res.method
        f.attrs["nfe"] = res.nfe
        f.attrs["acceleration"] = float(m.size / max(np.count_nonzero(m), 1))
        if settings is not None:
            f.attrs["settings"] = settings
    return out_path
