"""fastMRI's metrics (fastmri/evaluate.py definitions) on magnitude volumes, and directory-level evaluation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from tqdm import tqdm

from .arrays import as_array, as_tensor
from .devices import ensure_memory
from .errors import H5_DAMAGE, AmbientMRIError, DataFileError
from .files import check_count, input_files

METRICS = ("PSNR", "SSIM", "NMSE")


def center_crop(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Centre crop of the last two dims, with fastMRI's offsets ((W - w) // 2)."""
    h, w = shape
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise AmbientMRIError(f"cannot crop an image of size {H}x{W} to {h}x{w}")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top: top + h, left: left + w]


def _volume(x, name: str) -> np.ndarray:
    a = as_array(x, name)
    if np.iscomplexobj(a):
        a = np.abs(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or 0 in a.shape:
        raise AmbientMRIError(f"{name}: expected a non-empty volume (S, H, W) or slice (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise AmbientMRIError(f"{name}: contains NaN or Inf")
    return a.astype(np.float64) if a.dtype == np.float64 else a.astype(np.float32)


def psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    """Volume PSNR with data_range = gt.max(); inf for pred == gt (without numpy's divide-by-zero warning)."""
    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))


def ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean over slices of skimage SSIM (7x7 uniform window), data_range = gt volume max. In float64: in float32 the
    local variances under- or overflow at intensity scales such as 1e-12 or 1e12 and SSIM came out NaN."""
    gt, pred = gt.astype(np.float64), pred.astype(np.float64)
    maxval = gt.max()
    return float(np.mean([structural_similarity(g, p, data_range=maxval) for g, p in zip(gt, pred)]))


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """||gt - pred||² / ||gt||² over the volume."""
    return float(np.linalg.norm(gt - pred) ** 2 / np.linalg.norm(gt) ** 2)


def evaluate_volume(target, recon) -> dict[str, float]:
    """PSNR/SSIM/NMSE of a reconstruction against its reference, exactly as ``fastmri.evaluate``.

    target: (S, h, w) or (h, w) magnitude; recon: same or larger (centre-cropped to the target size), real or
    complex (its magnitude is used).
    """
    gt = _volume(target, "target")
    pred = _volume(recon, "reconstruction")
    if pred.shape[0] != gt.shape[0]:
        raise AmbientMRIError(f"reconstruction has {pred.shape[0]} slices, target has {gt.shape[0]}")
    pred = center_crop(pred, gt.shape[-2:])
    if not gt.max() > 0:  # an all-zero or negative target gave PSNR -inf, SSIM NaN or a negative SSIM
        raise AmbientMRIError(f"target has maximum {gt.max():.3g}: PSNR and SSIM take it as the data range, so the "
                              "target must be a magnitude image with a positive value")
    if min(gt.shape[-2:]) < 7:
        raise AmbientMRIError(f"images of {gt.shape[-2]}x{gt.shape[-1]}: SSIM's 7x7 window needs at least 7x7")
    return {"PSNR": psnr(gt, pred), "SSIM": ssim(gt, pred), "NMSE": nmse(gt, pred)}


def _read(path: Path, key: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataFileError(path, f"no dataset {key!r} (has {', '.join(f.keys())})")
            d = f[key]
            if not isinstance(d, h5py.Dataset):
                raise DataFileError(path, f"{key!r} is a group, not a dataset")
            if d.dtype.kind not in "biufc":  # compound {re, im} or strings: numpy would fail deep inside
                raise DataFileError(path, f"{key} has dtype {d.dtype}: expected real or complex numbers")
            return d[()]
    except H5_DAMAGE as e:
        raise DataFileError(path, f"cannot be read as HDF5 ({e})") from None


def _target_key(target_file: Path) -> str:
    import h5py

    try:
        with h5py.File(target_file, "r") as f:
            # fastMRI scores single-coil scans against the ESC target, multi-coil ones against RSS
            single = "kspace" in f and getattr(f["kspace"], "ndim", 4) == 3
            order = ("reconstruction_esc", "reconstruction_rss") if single else ("reconstruction_rss",
                                                                                  "reconstruction_esc")
            for key in order:
                if key in f:
                    return key
            raise DataFileError(target_file, "has no reference (reconstruction_rss or reconstruction_esc; fastMRI's "
                                f"test and challenge files carry none; it has {', '.join(f.keys()) or 'nothing'})")
    except H5_DAMAGE as e:
        raise DataFileError(target_file, f"cannot be read as HDF5 ({e})") from None


def scored_pair(target_file, recon_file, target_key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The magnitude volumes (S, h, w) that ``evaluate_file`` scores: the reference (``target_key``, default
    reconstruction_rss, else _esc) and the file's ``reconstruction``, both centre-cropped to (w, w) with w the
    target width (as ``fastmri.evaluate``; to (h, w) for a target of h < w rows). Any problem is a DataFileError
    naming the file at fault."""
    target_file, recon_file = Path(target_file), Path(recon_file)
    key = target_key or _target_key(target_file)
    gt, pred = _read(target_file, key), _read(recon_file, "reconstruction")
    for path, a, what in ((target_file, gt, key), (recon_file, pred, "reconstruction")):
        if a.ndim not in (2, 3) or 0 in a.shape:
            raise DataFileError(path, f"{what} has shape {a.shape}: expected a non-empty volume (S, H, W)")
        if a.dtype.kind not in "fc":  # uint8 display images: PSNR -44 (or 12 for a uint8 target), no word
            kind = "references" if path == target_file else "reconstructions"
            raise DataFileError(path, f"{what} is of dtype {a.dtype}: expected float (or complex) magnitudes in the "
                                f"scale of the k-space, as fastMRI's {kind} are")
        if not np.isfinite(a).all():
            raise DataFileError(path, f"{what} contains NaN or Inf")
    top = (np.abs(gt) if np.iscomplexobj(gt) else gt).max()  # a complex target is scored by its magnitude
    if not top > 0:  # PSNR and SSIM take the target's maximum as the data range
        what = "is all zero" if not np.abs(gt).max() > 0 else f"has maximum {top:.3g} (not a magnitude image)"
        raise DataFileError(target_file, f"{key} {what}: PSNR and SSIM are undefined against it")
    gt, pred = _volume(gt, key), _volume(pred, "reconstruction")
    if gt.shape[0] != pred.shape[0]:
        raise DataFileError(recon_file, f"has {pred.shape[0]} slices, its target {target_file.name} has {gt.shape[0]}")
    w = gt.shape[-1]
    size = (min(w, gt.shape[-2]), w)  # fastMRI's (w, w); a target wider than tall is scored whole, not refused
    try:
        return center_crop(gt, size), center_crop(pred, size)
    except AmbientMRIError as e:
        raise DataFileError(recon_file, f"{e} (target {target_file.name}: {gt.shape})") from None


def evaluate_file(target_file, recon_file, target_key: str | None = None) -> dict[str, float]:
    """PSNR/SSIM/NMSE of one reconstruction file against its reference file (``scored_pair``). Any problem is a
    DataFileError naming the file at fault."""
    gt, pred = scored_pair(target_file, recon_file, target_key)
    try:
        return evaluate_volume(gt, pred)
    except AmbientMRIError as e:
        raise DataFileError(recon_file, f"{e} (target {Path(target_file).name}: {gt.shape})") from None


def recorded_settings(recon_file) -> dict | None:
    """The settings an ``ambient-mri reconstruct`` output records (method, mask, R, steps, model digest, source,
    ...); None for files of other tools."""
    import json

    import h5py

    try:
        with h5py.File(recon_file, "r") as f:
            s = f.attrs.get("settings")
        s = json.loads(s.decode() if isinstance(s, bytes) else s)
        return s if isinstance(s, dict) else None
    except (*H5_DAMAGE, TypeError, ValueError, AttributeError):
        return None


def check_folders(*folders) -> None:
    """Each of ``folders`` must be an existing folder."""
    for d in folders:
        if not Path(d).is_dir():
            raise AmbientMRIError(f"{d}: not a directory")


def evaluate_dirs(target_dir, recon_dir, target_key: str | None = None, strict: bool = True,
                  progress: bool | None = False) -> dict:
    """Evaluate every reconstruction in ``recon_dir`` against the same-named file in ``target_dir``
    (``evaluate_file``). target_key: default ``reconstruction_rss`` (``reconstruction_esc`` when a file has no rss).

    Returns {"volumes": [{"file", "PSNR", "SSIM", "NMSE"}, ...], "mean": {...}, "targets": number of target
    files (those that cannot be used, e.g. HDF5 not named *.h5, included), "missing": target names without a
    reconstruction, "failed": [{"file", "path", "reason"}], "without_target": names of the reconstructions no target
    is named as}; the mean is over "volumes" only. ``strict``: the first bad file raises; otherwise every bad file
    is listed in "failed". ``progress``: a bar per volume (None: on terminals only).
    """
    target_dir, recon_dir = Path(target_dir), Path(recon_dir)
    check_folders(target_dir, recon_dir)
    targets, unusable = input_files(target_dir, what="fastMRI reference files", hint="rename it to *.h5")
    rows, missing = [], []
    # a target folder's files that are not *.h5 or cannot be read, and reconstructions without a target, are
    # listed: a mean of "1/1" must not hide them
    failed = [{"file": f.name, "path": str(f), "reason": why} for f, why in unusable]
    if strict and unusable:
        raise DataFileError(*unusable[0])
    names = {t.name for t in targets} | {f.stem + ".h5" for f, _ in unusable}  # a listed target's own output
    orphans = sorted(p.name for p in recon_dir.glob("*.h5") if not p.name.startswith(".") and p.name not in names)
    for tgt_file in tqdm(targets, desc="evaluate", unit="volume", disable=None if progress is None else not progress,
                         leave=False):
        rec_file = recon_dir / tgt_file.name
        if not rec_file.exists() and not rec_file.is_symlink():
            missing.append(tgt_file.name)
            continue
        try:
            row = {"file": tgt_file.name, **evaluate_file(tgt_file, rec_file, target_key)}
        except (AmbientMRIError, OSError, ValueError, TypeError, KeyError) as e:
            if strict:
                raise
            path, why = (e.path, e.problem) if isinstance(e, DataFileError) else (
                str(rec_file), str(e) if isinstance(e, AmbientMRIError) else f"cannot be scored ({e!r})")
            failed.append({"file": tgt_file.name, "path": path, "reason": why})
            continue
        settings = recorded_settings(rec_file)
        row["made_with"] = None if settings is None else {k: v for k, v in settings.items() if k != "source"}
        src = (settings or {}).get("source")
        source = src.get("name") if isinstance(src, dict) and isinstance(src.get("name"), str) else None
        if source is not None and source != tgt_file.name:  # swapped or renamed outputs score the wrong volume
            row["warning"] = (f"{rec_file} records being made from {source}, not from its target's name "
                              f"{tgt_file.name}")
        rows.append(row)
    if not rows:
        why = "; ".join(f"{f['path']}: {f['reason']}" for f in failed[:3])
        if missing:  # also beside listed bad files: the likelier cause is a folder of other names
            there = sorted(p.name for p in recon_dir.glob("*.h5"))
            why = "; ".join(filter(None, [why, f"{len(there)} .h5 file(s) there, none named as a target" if there
                                          else "no .h5 file there"]))
        raise AmbientMRIError(f"no reconstruction in {recon_dir} could be scored against a target file in "
                              f"{target_dir}" + (f" ({why})" if why else ""))
    mean = {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
    # e.g. reconstruct runs of two methods or models into one folder; a setting one file leaves unnamed (an
    # earlier version's default) and those that do not change what is made (seed, batch size) are not compared
    differ = {}
    for key in ("method", "model", "mask", "acceleration", "center_fraction", "steps", "num_samples", "coils"):
        values = {json.dumps(r["made_with"].get(key)) for r in rows if r["made_with"]} - {"null"}
        if len(values) > 1:
            differ[key] = sorted(values)
    if differ:
        which = "; ".join(f"{k} {', '.join(v)}" for k, v in differ.items())
        warnings.warn(f"the reconstructions in {recon_dir} were made with different settings ({which}): the mean "
                      "mixes them; each volume's are in its row's made_with (metrics.json)", stacklevel=2)
    return {"volumes": rows, "mean": mean, "targets": len(targets) + len(unusable), "missing": missing,
            "failed": failed, "without_target": orphans}


# --------------------------------------------------------------------------------------------------
# Memorisation: nearest training images of generated samples (pixel-space cosine similarity), SSIM of pairs
# --------------------------------------------------------------------------------------------------

_NN_BLOCK = 2**26  # similarity-matrix entries per matrix product (256 MiB in float32)


def _flat_unit(x, name: str, center: bool):
    import torch

    t = as_tensor(x, name).detach()
    if t.is_complex():
        t = t.abs()
    if t.ndim < 2 or t.shape[0] == 0:
        raise AmbientMRIError(f"{name}: expected a non-empty batch of images (N, ...), got shape {tuple(t.shape)}")
    t = t.reshape(t.shape[0], -1).to(torch.float32)
    if not torch.isfinite(t).all():
        raise AmbientMRIError(f"{name}: contains NaN or Inf")
    if center:
        t = t - t.mean(1, keepdim=True)
    return t / torch.linalg.vector_norm(t, dim=1, keepdim=True).clamp_min(1e-12)


def nearest_neighbours(samples, train, k: int = 1, center: bool = False, exclude_self: bool = False):
    """The ``k`` most similar training images of each sample by cosine similarity of the flattened images.

    samples (N, ...), train (M, ...) with the same number of values per image (numpy or torch; complex -> magnitude;
    the memorisation study passes images in the model's [-1, 1] scale). center=True subtracts each image's mean
    (Pearson correlation). exclude_self=True (samples *are* the training set) skips the pair (i, i).
    Batched: flatten and normalise once, then one matrix product per block of samples (one block unless
    N·M > 2^26) — no Python loop over training images. Returns (similarity (N, k) float32, index (N, k) int64),
    most similar first.
    """
    import torch

    samples, train = as_tensor(samples, "samples", copy=False), as_tensor(train, "train", copy=False)  # views
    # a float32 unit copy of each (a second temporary when mean-centred): past free memory the kernel's killer
    # ended a 2000 x 2000 study with no message
    ensure_memory(4.0 * (2.5 if center else 1.5) * (samples.numel() + train.numel()), "comparing the flattened "
                  "images", "the image size or the number of images")
    s, t = _flat_unit(samples, "samples", center), _flat_unit(train, "train", center)
    if s.shape[1] != t.shape[1]:
        raise AmbientMRIError(f"samples have {s.shape[1]} values per image, training images {t.shape[1]}; "
                              "bring them to the same size and channels first")
    if exclude_self and s.shape[0] != t.shape[0]:
        raise AmbientMRIError("exclude_self needs the samples to be the training set itself")
    M = t.shape[0] - int(exclude_self)
    check_count("k", k, high=M)
    block = max(1, _NN_BLOCK // t.shape[0])
    sims, idx = [], []
    for start in range(0, s.shape[0], block):
        S = torch.mm(s[start: start + block], t.T)
        if exclude_self:
            r = torch.arange(S.shape[0])
            S[r, r + start] = -torch.inf
        v, i = S.topk(k, dim=1)
        sims.append(v)
        idx.append(i)
    return torch.cat(sims).clamp_(-1, 1).numpy(), torch.cat(idx).numpy().astype(np.int64)


def cosine_similarity(a, b, center: bool = False) -> np.ndarray:
    """Cosine similarity of paired images a[i], b[i] (flattened): (N,)."""
    x, y = _flat_unit(a, "a", center), _flat_unit(b, "b", center)
    if x.shape != y.shape:
        raise AmbientMRIError(f"cannot pair images of shapes {tuple(x.shape)} and {tuple(y.shape)}")
    return (x * y).sum(1).clamp_(-1, 1).numpy()


def batch_ssim(a, b, data_range: float = 2.0, win_size: int = 7) -> np.ndarray:
    """SSIM of paired images (N, H, W) or (N, C, H, W), equal to skimage's ``structural_similarity`` with its
    defaults (7x7 uniform window, sample covariance, K1 0.01, K2 0.03; mean over channels), batched: (N,)."""
    from scipy.ndimage import uniform_filter

    x = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, dtype=np.float64)
    y = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, dtype=np.float64)
    if x.shape != y.shape:
        raise AmbientMRIError(f"cannot pair images of shapes {x.shape} and {y.shape}")
    if x.ndim == 3:
        x, y = x[:, None], y[:, None]
    if x.ndim != 4 or min(x.shape[-2:]) < win_size:
        raise AmbientMRIError(f"expected images (N, [C,] H, W) of at least {win_size}x{win_size}, got {x.shape}")
    size = (1, 1, win_size, win_size)

    def filt(v):
        return uniform_filter(v, size=size)

    cov_norm = win_size**2 / (win_size**2 - 1)
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return s[..., pad: s.shape[-2] - pad, pad: s.shape[-1] - pad].mean(axis=(1, 2, 3))
