"""``ambient-mri reconstruct``, ``evaluate`` and ``demo``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import AmbientMRIError, DataFileError
from .recon import METHODS, reconstruct_file


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.h5"))
        if files:
            return files
        raise AmbientMRIError(f"{path}: no .h5 files")
    raise AmbientMRIError(f"{path}: no such file or folder")


def _writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DataFileError(folder, f"output folder cannot be written ({e.strerror or e})") from None


def run_reconstruct(args) -> int:
    from .recon import DIFFUSION

    files = _inputs(Path(args.input))
    out = Path(args.output)
    if args.method in DIFFUSION and not args.model:
        raise AmbientMRIError(f"--method {args.method} needs --model (a model file from `ambient-mri train`)")
    for name in ("steps", "num_samples", "batch_size", "threads"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise AmbientMRIError(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    _writable(out)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    opts = dict(method=args.method, steps=args.steps, num_samples=args.num_samples, seed=args.seed,
                device=args.device, batch_size=args.batch_size, progress=False)
    if args.model:
        from .model import load_model

        opts["model"] = load_model(args.model)
    done = 0
    # a bar on terminals only (disable=None); closed before an error message is printed
    with tqdm(files, desc=f"reconstruct ({args.method})", unit="volume", disable=None) as bar:
        for f in bar:
            target = out / f.name
            if target.exists() and not args.overwrite:  # resumable: finished volumes are kept
                continue
            reconstruct_file(f, target, mask=args.mask, acceleration=args.acceleration,
                             center_fraction=args.center_fraction, **opts)
            done += 1
    print(f"{done} volume(s) reconstructed into {out} ({len(files) - done} already there)")
    return 0


def _save_png(path: Path, panels: list[tuple[str, np.ndarray]], vmax: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels):
        is_map = title.startswith(("error", "std"))
        ax.imshow(img, cmap="magma" if is_map else "gray", vmin=0, vmax=(vmax / 4 if is_map else vmax))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run_evaluate(args) -> int:
    import h5py

    from .metrics import center_crop, evaluate_dirs

    res = evaluate_dirs(args.target, args.recon)
    out = Path(args.output or args.recon)
    _writable(out)
    rows = res["volumes"]
    print(f"{'volume':<32} {'PSNR':>8} {'SSIM':>8} {'NMSE':>9}")
    for r in rows:
        print(f"{r['file']:<32} {r['PSNR']:8.3f} {r['SSIM']:8.4f} {r['NMSE']:9.5f}")
    m = res["mean"]
    print(f"{'mean':<32} {m['PSNR']:8.3f} {m['SSIM']:8.4f} {m['NMSE']:9.5f}")
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "PSNR", "SSIM", "NMSE"])
        w.writeheader()
        w.writerows(rows + [{"file": "mean", **m}])
    (out / "metrics.json").write_text(json.dumps(res, indent=2))
    for r in rows:
        with h5py.File(Path(args.target) / r["file"], "r") as t, h5py.File(Path(args.recon) / r["file"], "r") as p:
            key = "reconstruction_rss" if "reconstruction_rss" in t else "reconstruction_esc"
            gt = t[key][()]
            s = gt.shape[0] // 2
            rec = center_crop(p["reconstruction"][s], gt.shape[-2:])
            panels = [("reference", gt[s])]
            if "zero_filled" in p:
                panels.append(("zero-filled", center_crop(p["zero_filled"][s], gt.shape[-2:])))
            panels += [(f"recon ({p.attrs.get('method', '?')})", rec), ("error |recon - ref|", np.abs(rec - gt[s]))]
            if "std" in p:
                panels.append(("std over samples", center_crop(p["std"][s], gt.shape[-2:])))
        _save_png(out / f"{Path(r['file']).stem}.png", panels, float(gt.max()))
    print(f"metrics.csv, metrics.json and one PNG per volume in {out}")
    return 0


def add_commands(sub) -> None:
    r = sub.add_parser("reconstruct", help="reconstruct fastMRI files (a file or a folder)")
    r.add_argument("--model", help="model file (needed by the diffusion methods)")
    r.add_argument("--input", required=True, help="official fastMRI .h5 file or folder")
    r.add_argument("--output", required=True, help="folder for the reconstructions (one file per volume)")
    r.add_argument("--method", default="fast", choices=METHODS)
    r.add_argument("--mask", default=None, help="retrospective mask kind for fully-sampled files (default random)")
    r.add_argument("--acceleration", type=float, default=None, help="retrospective undersampling factor R")
    r.add_argument("--center-fraction", type=float, default=None, help="ACS fraction (default 0.08)")
    r.add_argument("--steps", type=int, default=None, help="sampler steps (default per method)")
    r.add_argument("--num-samples", type=int, default=1, help="posterior samples per slice (>1 gives std maps)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if present)")
    r.add_argument("--batch-size", type=int, default=None, help="slices per sampler batch")
    r.add_argument("--overwrite", action="store_true", help="redo volumes whose output exists")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.set_defaults(func=run_reconstruct)

    e = sub.add_parser("evaluate", help="PSNR/SSIM/NMSE of reconstructions against fastMRI references")
    e.add_argument("--target", required=True, help="folder of files with reconstruction_rss (or _esc)")
    e.add_argument("--recon", required=True, help="folder of reconstruction files (same names)")
    e.add_argument("--output", default=None, help="where metrics.csv/json and PNGs go (default: --recon)")
    e.set_defaults(func=run_evaluate)

    d = sub.add_parser("demo", help="the whole path on the built-in MNI152 demo data, no arguments needed")
    d.add_argument("--output", default="demo_run", help="folder for data, model, reconstructions and figures")
    d.add_argument("--minutes", type=float, default=4.0, help="training time budget in minutes (default 4)")
    d.add_argument("--size", type=int, default=64, help="image size of the demo data (default 64)")
    d.add_argument("--device", default=None, help="cpu, cuda (default: cuda if present)")
    d.add_argument("--adps-steps", type=int, default=100,
                   help="A-DPS steps in the demo (anchor: 500; about 8 s per slice per 100 steps on 2 CPU cores)")
    d.add_argument("--coils", type=int, default=8, help="simulated receive coils (default 8)")
    d.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default 0: 1 or torch's default, whichever a quick benchmark finds "
                        "faster on this machine now; on busy cores one thread can be 20x faster)")
    d.set_defaults(func=lambda a: __import__("ambient_mri.demo", fromlist=["run_demo"]).run_demo(a))
