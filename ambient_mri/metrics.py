"""fastMRI's metrics (fastmri/evaluate.py definitions) on magnitude volumes, and directory-level evaluation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .errors import AmbientMRIError, DataFileError

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
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if np.iscomplexobj(a):
        a = np.abs(a)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise AmbientMRIError(f"{name}: expected a volume (S, H, W) or a slice (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise AmbientMRIError(f"{name}: contains NaN or Inf")
    return a.astype(np.float64) if a.dtype == np.float64 else a.astype(np.float32)


def psnr(gt: np.ndarray, pred: np.ndarray) -> float:
    """Volume PSNR with data_range = gt.max()."""
    return float(peak_signal_noise_ratio(gt, pred, data_range=gt.max()))


def ssim(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean over slices of skimage SSIM (7x7 uniform window), data_range = gt volume max."""
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
    return {"PSNR": psnr(gt, pred), "SSIM": ssim(gt, pred), "NMSE": nmse(gt, pred)}


def _read(path: Path, key: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataFileError(path, f"no dataset {key!r} (has {', '.join(f.keys())})")
            return f[key][()]
    except OSError as e:
        raise DataFileError(path, f"cannot be read as HDF5 ({e})") from None


def evaluate_dirs(target_dir, recon_dir, target_key: str | None = None) -> dict:
    """Evaluate every reconstruction in ``recon_dir`` against the same-named file in ``target_dir``.

    Both volumes are centre-cropped to (W, W) with W the target width, as ``fastmri.evaluate`` does.
    target_key: default ``reconstruction_rss`` (``reconstruction_esc`` when a file has no rss).
    Returns {"volumes": [{"file", "PSNR", "SSIM", "NMSE"}, ...], "mean": {...}}.
    """
    import h5py

    target_dir, recon_dir = Path(target_dir), Path(recon_dir)
    for d in (target_dir, recon_dir):
        if not d.is_dir():
            raise AmbientMRIError(f"{d}: not a directory")
    rows = []
    for tgt_file in sorted(target_dir.glob("*.h5")):
        rec_file = recon_dir / tgt_file.name
        if not rec_file.exists():
            continue
        key = target_key
        if key is None:
            with h5py.File(tgt_file, "r") as f:
                key = "reconstruction_rss" if "reconstruction_rss" in f else "reconstruction_esc"
        gt = _read(tgt_file, key)
        pred = _read(rec_file, "reconstruction")
        w = gt.shape[-1]
        gt, pred = center_crop(gt, (w, w)), center_crop(pred, (w, w))
        rows.append({"file": tgt_file.name, **evaluate_volume(gt, pred)})
    if not rows:
        raise AmbientMRIError(f"no reconstruction in {recon_dir} matches a target file in {target_dir}")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in METRICS}
    return {"volumes": rows, "mean": mean}
